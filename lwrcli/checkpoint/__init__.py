"""Checkpoints as safetensors only (no pickle anywhere): the weights file, the resume state
beside it, and frozen-base runs that store only what they trained."""
