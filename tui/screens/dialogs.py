"""The modal screens, one module each; imported from here by the screens that ask questions."""

from .confirm import Confirm, ConfirmQuit, ConfirmRemove, ConfirmTrust
from .help import HelpScreen
from .log_view import LogScreen, read_tail

__all__ = ["Confirm", "ConfirmQuit", "ConfirmRemove", "ConfirmTrust", "HelpScreen", "LogScreen", "read_tail"]
