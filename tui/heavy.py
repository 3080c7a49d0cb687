"""Importing torch from two threads at once fails ("generic type already registered"): every
TUI thread that needs torch goes through here, so the imports happen one at a time."""

from __future__ import annotations

import threading

_lock = threading.Lock()


def import_torch():
    """Import torch and the engine modules that use it; a no-op once done."""
    with _lock:
        import safetensors.torch  # noqa: F401
        import torch
        import torchdeck.training.loop  # noqa: F401
        from torchdeck.models import summary

        summary.warm_up()  # the first meta-device op pulls in torch._dynamo: pay it here, in the background
        return torch
