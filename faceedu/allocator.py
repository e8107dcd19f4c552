"""Keep glibc's malloc from returning large buffers to the system after every training step.

A training step on the CPU allocates and frees the same large activation and gradient buffers every
step (tens of MB each for the face VAE at 144 x 144). glibc serves any request above its mmap threshold
(128 kB, adapting up to 32 MB) with a fresh mmap and gives it back with munmap on free; the next step
maps it again and the kernel zero-fills every page on first touch. Measured on the full VAE's step
(batch 32, one thread; docs/benchmarks.md), that was 2-4.6 s of system time a step, more than a third of
the step. With mmap disabled for malloc (M_MMAP_MAX = 0) and the heap never trimmed (M_TRIM_THRESHOLD
= -1; the full step's heap peaks above 2 GiB, so a finite threshold that fits mallopt's int would still
hand the top back every step), freed buffers stay in the heap and the next step reuses them.

`import faceedu` applies this (faceedu/__init__.py), so every `faceedu` command, the test suite and
every notebook kernel that imports faceedu trains with it. The cost: the process keeps the peak of its
heap as resident memory until it exits (it would reach that peak every step anyway).

Set FACEEDU_MALLOC=default to leave glibc's defaults alone. A GLIBC_TUNABLES variable that sets malloc's
mmap_max or trim_threshold is respected (it already took effect at startup). Nothing happens on a
system whose C library is not glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1          # glibc's malloc.h: parameter numbers for mallopt
M_MMAP_MAX = -4
TRIM_THRESHOLD = -1            # mallopt(3): "-1 disables trimming completely" (its int argument cannot say 64 GiB)

STATE: dict = {"applied": False, "reason": "not tried"}


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p      # only glibc has it
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> dict:
    """Apply mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, -1) once; returns STATE
    ({"applied": bool, "reason": str})."""
    if STATE["applied"]:
        return STATE
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if os.environ.get("FACEEDU_MALLOC", "").lower() == "default":
        STATE["reason"] = "FACEEDU_MALLOC=default"
    elif "malloc.mmap_max" in tunables or "malloc.trim_threshold" in tunables:
        STATE["reason"] = "GLIBC_TUNABLES sets malloc itself"
    elif (libc := _glibc()) is None:
        STATE["reason"] = "not glibc"
    else:
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        STATE.update(applied=ok, reason="mallopt" if ok else "mallopt refused")
    return STATE


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mapped_bytes() -> int | None:
    """Bytes malloc currently holds in separately mmapped chunks (mallinfo2's hblkhd; None without glibc
    2.33+). Stays flat while `keep_freed_memory` is in effect, whatever is allocated."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblkhd)
