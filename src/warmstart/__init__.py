"""warmstart: compute-efficient language-model pre-training that starts from what you already have."""

__version__ = "0.1.0"
