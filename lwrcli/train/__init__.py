"""A run: resolve, build components, the engine, checkpoints, run folder, progress, live logging."""
