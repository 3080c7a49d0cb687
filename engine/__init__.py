"""torchdeck's engine: models, data, runs, checkpoints and exports, with no UI.

Importing this package is cheap: torch, onnx and onnxruntime are imported by the
functions that need them, so a UI can paint before they load.
"""

__version__ = "0.1.0"
