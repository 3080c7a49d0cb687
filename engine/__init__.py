"""torchdeck's engine: models, data, runs, checkpoints and exports, with no UI.

Importing this package is cheap: torch, onnx and onnxruntime are imported by the
functions that need them, so a UI can paint before they load. The logging API
(`torchdeck.init`, `torchdeck.log`, `torchdeck.finish`; see torchdeck.api) is loaded on
first use.
"""

__version__ = "0.1.0"

_API = ("init", "log", "finish", "Run", "LoggingWarning")


def __getattr__(name: str):
    if name in _API:
        from torchdeck import api

        return getattr(api, name)
    if name == "TorchdeckError":
        from torchdeck.errors import TorchdeckError

        return TorchdeckError
    raise AttributeError(f"module 'torchdeck' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API, "TorchdeckError"])
