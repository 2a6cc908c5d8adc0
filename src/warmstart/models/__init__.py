"""Models: Hugging Face causal LMs from presets, configs or checkpoints; saving; FLOPs per token."""
