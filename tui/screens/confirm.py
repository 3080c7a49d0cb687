"""Yes/no questions: quit with runs going on, run code from a file, remove a model, delete a
checkpoint."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static


class Confirm(ModalScreen[bool]):
    """A yes/no question: y (or the extra yes keys) answers True; n or Escape, False."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]
    YES_KEYS: tuple[str, ...] = ()

    def __init__(self, title: str, body: str, yes: str, no: str):
        super().__init__()
        self.title_text, self.body, self.yes, self.no = title, body, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as box:
            box.border_title = self.title_text
            yield Static(self.body, markup=False)
            keys = "/".join(["y", *self.YES_KEYS])
            yield Label(f"[b]{keys}[/b] {self.yes}    [b]n[/b]/Escape {self.no}")

    def on_key(self, event) -> None:
        if event.key in self.YES_KEYS:
            event.stop()
            self.dismiss(True)

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ConfirmQuit(Confirm):
    YES_KEYS = ("q", "enter")

    def __init__(self, active: list[str]):
        n = len(active)
        super().__init__(
            "Quit torchdeck?",
            f"{n} training run{'s' if n != 1 else ''} go{'es' if n == 1 else ''} on in the background after "
            "torchdeck quits:\n  " + "\n  ".join(active[:5]) + "\n\nOpen torchdeck again (or `torchdeck runs list`) to watch.",
            "quit", "stay")
        self.active = active


class ConfirmTrust(Confirm):
    def __init__(self, what: str, reason: str):
        super().__init__(
            "Run code from this file?",
            f"{what}\n\n{reason}\n\nBuilding it imports that module and runs its code with your permissions. "
            "Only go on if you trust where the file came from.",
            "trust and go on", "cancel")


class ConfirmRemove(Confirm):
    def __init__(self, name: str, spec: str):
        super().__init__("Remove model?", f"Unregister {name} ({spec}) from this workspace?\n"
                         "Its runs, checkpoints and exports stay.", "remove", "keep")


class ConfirmUnpickle(Confirm):
    """Loading a file that needs full unpickling: names the file, what it asks for and the risk."""

    def __init__(self, path: str, globals_: list[str]):
        wanted = ", ".join(globals_) if globals_ else "globals outside the safe list"
        super().__init__(
            "Load this file with full unpickling?",
            f"{path}\n\nIt asks for {wanted}.\n\nLoading runs code from the file: whatever it was written to do "
            "runs with your permissions (read your keys and data, change or delete files, start programs). "
            "Only go on if you trust where the file came from. Trusted for this session only.",
            "load it, running its code", "cancel")


class ConfirmDelete(Confirm):
    def __init__(self, name: str, where: str, size: str):
        super().__init__("Delete checkpoint?", f"{name}  ({size})\n{where}\n\n"
                         "Its files are deleted for good; the run and its other checkpoints stay.",
                         "delete", "keep")
