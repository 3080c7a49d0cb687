"""The modal screens, one module each; imported from here by the screens that ask questions."""

from .confirm import (
           Confirm,
           ConfirmDelete,
           ConfirmQuit,
           ConfirmRemove,
           ConfirmTrust,
           ConfirmUnpickle,
)
from .help import HelpScreen
from .log_view import LogScreen, read_tail

__all__ = ["Confirm", "ConfirmDelete", "ConfirmQuit", "ConfirmRemove", "ConfirmTrust", "ConfirmUnpickle", "HelpScreen",
           "LogScreen", "read_tail"]
