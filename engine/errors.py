"""Errors the engine raises on purpose: each carries a code from CODES and, when it is about one
input, the field (the option's name without dashes, `_` for `-`: `model`, `data`, `batch_size`).

Callers decide from the code and the field, never from the wording: the TUI focuses the field,
the command line maps the class to an exit status and prints {"error": {code, message, field}}
with --json.
"""

from __future__ import annotations

# code -> what it means (the README's list is made from this one)
CODES: dict[str, str] = {
    "invalid_value": "a value is malformed or out of range",
    "not_found": "a named thing (run, model, checkpoint, file) does not exist",
    "untrusted": "doing it would run code from a file or spec that is not trusted",
    "corrupt": "a file is damaged or is not what it claims to be",
    "unreadable": "a file or directory cannot be read or written (permissions, not a regular file)",
    "no_space": "the disk is too full to write",
    "busy": "someone else holds the run or file (another worker, an active run)",
    "exists": "the target already exists and would be overwritten",
    "failed": "the operation was tried and failed (a run, an export, a check)",
    "usage": "the command line itself is wrong: an unknown option, a missing argument",
    "internal": "a bug in torchdeck: the log holds the traceback",
}

# The fields an error can name: the command line options without dashes, `_` for `-`.
FIELDS = ("model", "data", "batch_size", "epochs", "lr", "optimizer", "loss", "seed", "threads", "dataset_size",
          "keep_checkpoints", "keep_best", "best_metric", "out", "opset", "name", "spec", "args", "input_shape", "description", "checkpoint",
          "path", "workspace", "run",
          # the rest of a run's settings (RunConfig), and the `--config` file itself
          "device", "max_steps", "schedule", "warmup_steps", "momentum", "nesterov", "weight_decay", "betas",
          "label_smoothing", "accumulate", "precision", "deterministic", "val_fraction", "val_every",
          "early_stop_patience", "num_workers", "collate", "step", "grad_clip", "checkpoint_every", "init_from",
          "config",
          # a command run (torchdeck run -- CMD)
          "command", "cwd", "int_timeout", "term_timeout",
          # exports (torchdeck export ..., torchdeck onnx ...)
          "exporter", "dynamic", "dims", "mode", "dtype")

# How values are named in messages -> their field ("learning rate" is --lr).
_FIELD_ALIASES = {"learning rate": "lr", "keyword arguments": "args", "import path": "spec"}


def field_for(name: str) -> str:
    """The field of a value named in words: "batch size" -> batch_size, "learning rate" -> lr."""
    name = name.strip().lower()
    return _FIELD_ALIASES.get(name, name.replace("-", "_").replace(" ", "_"))


class TorchdeckError(Exception):
    """Base of every error meant for the user: its message is one clear line."""

    exit_code = 1
    default_code = "failed"
    default_field: str | None = None

    def __init__(self, message: str = "", *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.code = code or self.default_code
        assert self.code in CODES, self.code
        self.field = field or self.default_field

    @property
    def message(self) -> str:
        return str(self)

    def to_json(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "field": self.field}


class InvalidRequest(TorchdeckError):
    """The request itself is wrong: a bad value, an unknown name, a spec that does not build."""

    exit_code = 2
    default_code = "invalid_value"


class NotFound(InvalidRequest):
    default_code = "not_found"


class DataError(InvalidRequest):
    """A data spec is wrong, or its data cannot be used: about the `data` field."""

    default_field = "data"


class Exists(InvalidRequest):
    """The target already exists and would be overwritten."""

    default_code = "exists"


class OperationFailed(TorchdeckError):
    """The operation was tried and failed: a corrupt file, a failed check, a failed run."""

    exit_code = 1
    default_code = "failed"


class Corrupt(OperationFailed):
    default_code = "corrupt"


class Unreadable(OperationFailed):
    """A file or directory cannot be read or written: permissions, or not a regular file."""

    default_code = "unreadable"


class Busy(OperationFailed):
    default_code = "busy"


class NoSpace(OperationFailed):
    default_code = "no_space"


class UnsafeFile(OperationFailed):
    """Opening the file would run code from it (full unpickling or an untrusted model spec)."""

    default_code = "untrusted"


class InternalError(TorchdeckError):
    """Not raised by the engine: what the command line reports for an unexpected exception."""

    exit_code = 1
    default_code = "internal"


def from_os_error(e: OSError, what: str, *, field: str | None = None) -> TorchdeckError:
    """The error for an OSError met while reading or writing `what` (a path, in words)."""
    import errno

    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: {reason}", field=field)
    if e.errno == errno.ENOENT:
        return NotFound(f"{what}: {reason}", field=field)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.ENXIO):
        return Unreadable(f"{what}: {reason}", field=field)
    return OperationFailed(f"{what}: {reason}", field=field)
