"""`import faceedu` keeps glibc's malloc from unmapping freed training buffers (faceedu/allocator.py): a
large tensor freed and allocated again is served from the heap, not by a fresh mmap, in every process that
imports faceedu (commands, notebook kernels, this suite); FACEEDU_MALLOC=default leaves glibc's defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from faceedu.allocator import STATE, _glibc, mapped_bytes

PROBE = """
import json, faceedu, torch
from faceedu.allocator import STATE, mapped_bytes
before = mapped_bytes()
x = torch.ones(32 * 2**20 // 4)           # 32 MB, above glibc's largest dynamic mmap threshold
during = mapped_bytes()
del x
print(json.dumps({"state": STATE, "grew": during - before}))
"""

needs_glibc = pytest.mark.skipif(_glibc() is None or mapped_bytes() is None, reason="glibc 2.33+ only")


def probe(**env) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("FACEEDU_MALLOC", "GLIBC_TUNABLES")} | env
    out = subprocess.run([sys.executable, "-c", PROBE], env=environment | {"OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


@needs_glibc
def test_importing_faceedu_keeps_large_buffers_off_mmap():
    assert STATE["applied"], STATE                                    # in this very test process too
    result = probe()
    assert result["state"] == {"applied": True, "reason": "mallopt"}
    assert result["grew"] < 2**20, result                              # served from the heap


@needs_glibc
def test_opting_out_restores_glibcs_mmap_and_the_probe_sees_it():
    result = probe(FACEEDU_MALLOC="default")
    assert result["state"]["applied"] is False and result["state"]["reason"] == "FACEEDU_MALLOC=default"
    assert result["grew"] >= 32 * 2**20, result                        # glibc maps the buffer on its own
