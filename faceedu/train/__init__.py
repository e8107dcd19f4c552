"""Training: one shared loop (`loop.py`) and one module per model that defines its Task."""
