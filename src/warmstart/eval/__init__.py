"""Evaluation: per-domain validation loss and perplexity."""
