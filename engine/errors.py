"""Errors the engine raises on purpose; each maps to one exit status on the command line."""


class TorchdeckError(Exception):
    """Base of every error meant for the user: its message is one clear line."""

    exit_code = 1


class InvalidRequest(TorchdeckError):
    """The request itself is wrong: a bad value, an unknown name, a spec that does not build."""

    exit_code = 2


class OperationFailed(TorchdeckError):
    """The operation was tried and failed: a corrupt file, a failed check, a failed run."""

    exit_code = 1


class UnsafeFile(OperationFailed):
    """Opening the file would run code from it (full unpickling or an untrusted model spec)."""
