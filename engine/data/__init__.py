"""Data: specs (synthetic, files, callables) loaded into tensors and checked against a model."""
