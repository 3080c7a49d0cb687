"""Exports: ONNX with a validation report against PyTorch."""
