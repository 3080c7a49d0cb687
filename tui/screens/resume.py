"""Resume a run that ended: its length (and a diverged run's rate) are the only choices."""

from __future__ import annotations

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static
from torchdeck.errors import TorchdeckError
from torchdeck.runs.config import parse_number


class ResumeDialog(ModalScreen[str | None]):
    """Asks for the run's length (epochs) and, for a diverged run, a learning rate; Enter plans
    and starts the resume (an error stays in the dialog, beside what was typed); dismissed with
    the run's id once its worker is launched, None on Escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="resume.cancel")]

    def __init__(self, ref: str, label: str, state: str, epochs: int, lr: float, *, checkpoint: str = "",
                 max_steps: int | None = None):
        super().__init__()
        self.ref, self.label, self.state = ref, label, state
        self.epochs, self.lr, self.checkpoint = epochs, lr, checkpoint
        # The length as the run was given it: a run bounded by steps is lengthened in steps.
        self.by_steps = max_steps is not None
        self.length = max_steps if max_steps is not None else epochs

    def compose(self) -> ComposeResult:
        where = f"from {self.checkpoint}" if self.checkpoint else "from its latest checkpoint"
        if self.state == "diverged":
            where = "from its last checkpoint with finite weights"
        body = (f"Continue run {self.label} ({self.state}) {where}, in its own directory, exactly as if it had "
                "never stopped. Only its length may change"
                + (", and its learning rate (then the continuation is not exact)." if self.state == "diverged" else "."))
        with Vertical(classes="dialog", id="resume-dialog") as box:
            box.border_title = "Resume run"
            yield Static(body, markup=False)
            with Horizontal(classes="form-row"):
                yield Label("Max steps" if self.by_steps else "Epochs", classes="form-label")
                yield Input(str(self.length), id="r-epochs", compact=True)
            if self.state == "diverged":
                with Horizontal(classes="form-row"):
                    yield Label("Learning rate", classes="form-label")
                    yield Input(f"{self.lr / 10:g}", id="r-lr", compact=True)
            yield Static("", id="resume-error")
            yield Label("[b]Enter[/b] resume    [b]Escape[/b] cancel")

    def on_mount(self) -> None:
        self.query_one("#r-epochs", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _submit(self, _event) -> None:
        error = self.query_one("#resume-error", Static)
        try:
            length = parse_number(self.query_one("#r-epochs", Input).value,
                                  "max steps" if self.by_steps else "epochs", int)
            lr = None
            if self.state == "diverged":
                lr = parse_number(self.query_one("#r-lr", Input).value, "learning rate", float)
        except TorchdeckError as e:
            error.update(f"[red]{escape(str(e))}[/red]")
            return
        error.update("[dim]checking the checkpoint and starting…[/dim]")
        changed = None if length == self.length else length
        self.start(None if self.by_steps else changed, changed if self.by_steps else None, None if lr == self.lr else lr)

    @work(thread=True, exclusive=True, group="resume", exit_on_error=False)
    def start(self, epochs: int | None, max_steps: int | None, lr: float | None) -> None:
        from torchdeck.runs import resume
        from torchdeck.runs.store import RunStore

        try:
            store = RunStore(self.app.workspace)
            plan = resume.plan(store, self.ref, epochs=epochs, max_steps=max_steps, lr=lr)
            run = resume.start(plan, store)
        except TorchdeckError as e:
            self.app.call_from_thread(self._failed, str(e))
            return
        self.app.call_from_thread(self.app.notify, plan.describe(), markup=False)
        self.app.call_from_thread(self.dismiss, run.id)

    def _failed(self, text: str) -> None:
        self.query_one("#resume-error", Static).update(f"[red]{escape(text)}[/red]")
