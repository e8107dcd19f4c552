"""faceedu: a graded course on facial attribute manipulation with deep generative models."""

__version__ = "0.1.0"
