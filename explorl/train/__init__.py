"""The training loop, its data records, checkpoints and logging."""
