"""Many runs: sweeps, reports, paper rows, the presets table."""
