"""Checkpoints: atomic torchdeck checkpoint directories and reading other formats."""
