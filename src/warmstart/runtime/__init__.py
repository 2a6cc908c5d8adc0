"""What a running job shares, below `eval/` and `train/`: the process group, the run directory, its metrics log."""
