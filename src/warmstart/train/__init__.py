"""Training: LR schedules, the one training loop, checkpoints, distributed setup."""
