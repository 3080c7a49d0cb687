"""What the framework integrations share: one torchdeck run per logger or callback, opened when
the framework starts, its steps merged, its hyper-parameters made JSON.

- A framework logs one step in several calls (Lightning: the training metrics, then the
  validation metrics at the same step, each with "epoch"; Hugging Face: the loss, then the
  evaluation, then the run's totals). Different names at one step go in as they come; a name
  already logged at that step keeps its first value, the later ones left out silently (the
  repeated "epoch"; an evaluation repeated after training at its last step): the framework
  repeats itself, which is no mistake of the user's to warn about.
- Logging after the run's end (Lightning's `trainer.test()` after `fit`, Hugging Face's
  `trainer.evaluate()` after `train`) continues the same run (`torchdeck.init(id=..., resume=True)`),
  its steps going on; where another process has taken the run meanwhile, a warning, and what
  follows is dropped (logging never ends training).
- A session marked `in_training` whose process exits before training ended (an exception that
  escaped the framework's loop and was caught by the script) ends "failed"; an uncaught one is
  the API's excepthook's ("failed" with the exception's line; Ctrl-C "stopped").
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
import weakref
from typing import Any, Mapping

from torchdeck import api
from torchdeck.errors import InvalidRequest, TorchdeckError

_sessions: "weakref.WeakSet[Session]" = weakref.WeakSet()
_atexit_registered = False
NOT_ENDED = "training did not end: an exception escaped the trainer's loop (caught by the script)"


def plain(obj: Any, depth: int = 0) -> Any:
    """Hyper-parameters as JSON values: mappings (dicts, argparse.Namespace, OmegaConf configs,
    dataclasses) and sequences kept nested, enums by value, paths as strings, one-element tensors
    and numpy scalars as numbers, classes and functions by qualified name, anything else by its
    (shortened) repr. Never raises."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if depth >= 32:
        return _short_repr(obj)
    try:
        return _plain(obj, depth)
    except Exception:  # noqa: BLE001  (a hyper-parameter's odd __iter__ or __repr__ must not stop training)
        return _short_repr(obj)


def _plain(obj: Any, depth: int) -> Any:
    import dataclasses
    import enum
    from argparse import Namespace
    from collections.abc import Sequence, Set

    if type(obj).__module__.split(".")[0] == "omegaconf":
        omegaconf = sys.modules["omegaconf"]
        try:
            obj = omegaconf.OmegaConf.to_container(obj, resolve=True, throw_on_missing=False)
        except Exception:  # noqa: BLE001  (an interpolation that does not resolve: kept as written)
            obj = omegaconf.OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, Namespace):
        obj = vars(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else str(k): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return plain(obj.value, depth + 1)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (bytes, bytearray)):
        return _short_repr(obj)
    if isinstance(obj, Set):
        return [plain(v, depth + 1) for v in sorted(obj, key=repr)]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        if obj.numel() == 1:
            return obj.item()
        return obj.tolist() if obj.numel() <= 16 else f"tensor of shape {list(obj.shape)} ({obj.dtype})"
    if torch is not None and isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    if np is not None and isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 16 else f"array of shape {list(obj.shape)} ({obj.dtype})"
    if isinstance(obj, Sequence):
        return [plain(v, depth + 1) for v in obj]
    if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__")):
        return f"{getattr(obj, '__module__', '') or ''}.{obj.__qualname__}".lstrip(".")
    return _short_repr(obj)


def _short_repr(obj: Any, limit: int = 500) -> str:
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Session:
    """One integration's torchdeck run, made on first use (on the process of rank 0 only: the
    integration decides and never opens one elsewhere)."""

    def __init__(self, *, name: str | None, workspace: Any, config: Mapping[str, Any] | None, id: str | None,
                 resume: bool):
        if name is not None and not isinstance(name, str):
            raise InvalidRequest(f"name must be a string, not {type(name).__name__}", field="name")
        if config is not None and not isinstance(config, Mapping):
            raise InvalidRequest(f"config must be a dict, not {type(config).__name__}", field="config")
        if workspace is not None and not isinstance(workspace, (str, os.PathLike)):
            raise InvalidRequest(f"workspace must be a path, not {type(workspace).__name__}", field="workspace")
        self.name = name
        self.workspace = workspace
        self.config = dict(config) if config else {}
        self.id = id
        self.resume = resume
        self.run: api.Run | None = None
        self.in_training = False
        self._step: int | None = None  # the last step the run took from us
        self._at_step: dict[str, Any] = {}  # what was logged at it

    def __getstate__(self) -> dict[str, Any]:
        # A copy in another process (ddp_spawn pickles the logger) makes its own run, if rank 0.
        return {**self.__dict__, "run": None, "in_training": False, "_step": None, "_at_step": {}}

    # -- the run ----------------------------------------------------------------------------------
    def open(self, config: Mapping[str, Any] | None = None) -> api.Run:
        """The run, made now if there is none; continued if it has ended (logging after the end)."""
        global _atexit_registered
        run = self.run
        if run is None:
            params = {**self.config, **(config or {})}
            self.run = api.init(name=self.name, config=params or None, workspace=self.workspace, id=self.id,
                                resume=self.resume)
            self._step, self._at_step = None, {}
            _sessions.add(self)
            if not _atexit_registered:  # after init's own: atexit runs this one first
                _atexit_registered = True
                atexit.register(_at_exit)
        elif run.finished and run.path is not None:  # what was logged at the last step still stands
            try:
                self.run = api.init(id=run.id, resume=True, workspace=run.path.parent.parent)
            except TorchdeckError as e:  # another process took the run meanwhile: logging must not end training
                warnings.warn(f"run {run.id} cannot be continued ({e}): what is logged from now on is dropped",
                              api.LoggingWarning, stacklevel=2)
                self.run = api._NoOpRun()
        return self.run

    def new_run(self, config: Mapping[str, Any] | None = None) -> api.Run:
        """A run of its own from now on (a second `trainer.train()`: its steps start again)."""
        if self.in_training:
            self.finish_open("failed", NOT_ENDED)
        else:
            self.finish_open()
        self.run = None
        return self.open(config)

    def finish_open(self, state: str | None = None, message: str = "") -> None:
        """End the run if it is open (finished, or stopped once a stop was asked; `state` wins)."""
        self.in_training = False
        run = self.run
        if run is not None and not run.finished:
            run.finish(state, message)

    # -- what the framework tells -----------------------------------------------------------------
    def log(self, values: Mapping[str, Any], step: int | None) -> None:
        run = self.open()
        if step is not None and step == self._step:
            values = {k: v for k, v in values.items() if k not in self._at_step}
        if not values:
            return
        run.log(values, step=step)
        if step is None or run.step == step:  # taken (a step that went back was dropped, warned)
            if run.step != self._step:
                self._step, self._at_step = run.step, {}
            self._at_step.update(values)

    def should_stop(self) -> bool:
        run = self.run
        return run is not None and not run.finished and run.should_stop()


def _at_exit() -> None:
    for session in list(_sessions):
        run = session.run
        if session.in_training and run is not None and not run.finished and run._pid == os.getpid():
            try:  # a stop's SIGTERM ends the process with SystemExit, which no excepthook sees: stopped
                session.finish_open(*(() if run._stop_seen else ("failed", NOT_ENDED)))
            except BaseException as e:  # noqa: BLE001
                print(f"torchdeck: could not end run {run.id}: {e}", file=sys.stderr)
