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
    "unreadable": "a file or directory cannot be read (permissions, not a regular file)",
    "no_space": "the disk is too full to write",
    "busy": "someone else holds the run or file (another worker, an active run)",
    "exists": "the target already exists and would be overwritten",
    "failed": "the operation was tried and failed (a run, an export, a check)",
    "internal": "a bug in torchdeck: the log holds the traceback",
}


class TorchdeckError(Exception):
    """Base of every error meant for the user: its message is one clear line."""

    exit_code = 1
    default_code = "failed"

    def __init__(self, message: str = "", *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.code = code or self.default_code
        assert self.code in CODES, self.code
        self.field = field

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


class OperationFailed(TorchdeckError):
    """The operation was tried and failed: a corrupt file, a failed check, a failed run."""

    exit_code = 1
    default_code = "failed"


class Corrupt(OperationFailed):
    default_code = "corrupt"


class Busy(OperationFailed):
    default_code = "busy"


class NoSpace(OperationFailed):
    default_code = "no_space"


class UnsafeFile(OperationFailed):
    """Opening the file would run code from it (full unpickling or an untrusted model spec)."""

    default_code = "untrusted"
