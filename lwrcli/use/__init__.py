"""What a checkpoint is used for: evaluate, post-hoc, zero-shot, predict, export, analysis."""
