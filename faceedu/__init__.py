"""faceedu: a graded course on facial attribute manipulation with deep generative models."""

__version__ = "0.1.0"

# Freed training buffers stay in the heap instead of being unmapped and mapped again every step (glibc;
# FACEEDU_MALLOC=default opts out): see faceedu/allocator.py and docs/benchmarks.md.
from faceedu.allocator import keep_freed_memory as _keep_freed_memory

_keep_freed_memory()
