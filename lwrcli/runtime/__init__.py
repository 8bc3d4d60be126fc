"""Ground-floor helpers every layer may use: devices and autocast, processes
(torchrun), SLURM, run names."""
