"""A Lightning logger that makes a Trainer's fit a torchdeck run.

    from torchdeck.integrations.lightning import TorchdeckLogger

    trainer = L.Trainer(logger=TorchdeckLogger(name="baseline"), log_every_n_steps=1, ...)
    trainer.fit(model, data)

One class for both packages: it is built on the `Logger` of the Lightning the script imported
(`lightning.pytorch`, else `pytorch_lightning`; `lightning` when neither is imported yet) and
registered as a virtual subclass of the other's, so `lightning.pytorch.Trainer` and
`pytorch_lightning.Trainer` both take it (each checks `isinstance` against its own `Logger`).

- The run is made when the Trainer first asks for it (`experiment`, `version`: fit's setup), on
  global rank 0 only; `version` is its id. Its name: `name=`. Logging after its end from the
  same Trainer (`test()` after `fit()`) continues it; another Trainer given the same logger
  (folds of a cross-validation) makes a run of its own, with the same name.
- Steps: Lightning logs at its count of optimizer steps taken before the batch (0 for the first);
  the run counts from 1, as torchdeck's own loop, so Lightning's step s is the run's step s + 1,
  and a checkpoint Lightning names `step=N` is recorded at step N, beside the metrics logged
  after that batch. Metrics logged in several calls at one step (training, then validation,
  each with "epoch") are merged (torchdeck.integrations._common).
- Names are kept as logged ("train/loss", "val_loss", "epoch"). The run's main loss curve
  ("loss") is the training loss: a metric named "loss" if the module logs one, else `loss_key=`,
  else the first logged of LOSS_KEYS; it is then written under both names.
- Hyper-parameters (`save_hyperparameters()`, a datamodule's, `log_hyperparams`) go into the
  run's config (`params`; Namespace, dict, OmegaConf and nested values made JSON).
- Checkpoints: each file ModelCheckpoint saves is recorded by its path, with its role ("best",
  "last", or "" for another of the top k). `runs show` lists those still there.
- End: a fit that ends ("success") -> finished, or stopped when a stop was asked; an exception
  -> failed with its line; Ctrl-C, or the SIGTERM `runs stop` sends when its request goes
  unanswered -> stopped (as the logging API's excepthook decides). A stop asked from the TUI or `torchdeck runs stop`
  is seen at the next `log_metrics` (every `log_every_n_steps`) and sets `trainer.should_stop`.
"""

from __future__ import annotations

import importlib
import os
import sys
import weakref
from typing import Any, Mapping

from torchdeck import api
from torchdeck.integrations._common import Session, plain

__all__ = ["TorchdeckLogger", "LOSS_KEYS"]

INSTALL_HINT = ("torchdeck.integrations.lightning needs Lightning: pip install lightning "
                "(or pip install pytorch-lightning)")
# Names taken for the run's main loss curve when the module logs no "loss", in this order.
LOSS_KEYS = ("train_loss", "train/loss", "training_loss", "train_loss_step", "train/loss_step", "loss_step")
_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def _import_lightning():
    """The `lightning.pytorch` or `pytorch_lightning` module the script uses; ImportError with
    what to install when neither is there."""
    order = _PACKAGES
    if "pytorch_lightning" in sys.modules and "lightning.pytorch" not in sys.modules:
        order = order[::-1]
    missing: list[str] = []
    for name in order:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name not in (name, name.split(".")[0]):
                raise  # installed, but something it needs is not: that is the error to see
            missing.append(name)
    raise ImportError(f"{INSTALL_HINT} (neither {' nor '.join(missing)} can be imported)")


_pl = _import_lightning()
_Logger = _pl.loggers.Logger


def _register_with_other_lightning(cls: type) -> None:
    """Make `cls` a virtual subclass of the other package's Logger, where it is imported."""
    for name in _PACKAGES:
        module = sys.modules.get(name)
        if module is None or module is _pl:
            continue
        other = getattr(getattr(module, "loggers", None), "Logger", None)
        if other is not None and not issubclass(cls, other):
            other.register(cls)


def _rank_zero() -> bool:
    """Global rank 0, as Lightning sets it (one counter for both packages), or as the launcher's
    environment says before the Trainer has set it."""
    rz = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(getattr(rz, "rank_zero_only", None), "rank", 0)
    return not rank and api._rank_is_zero()


class TorchdeckLogger(_Logger):
    """Streams what a Lightning Trainer logs into a torchdeck run (see the module's docstring).

    name: the run's name. workspace: its workspace (default: as `torchdeck.init`). config:
    settings recorded with the hyper-parameters. id/resume: as `torchdeck.init` (continue a run).
    loss_key: the metric that is the run's main loss curve (default: "loss", else LOSS_KEYS).
    save_dir: where the Trainer puts what it saves through the logger, ModelCheckpoint's default
    directory among them (`save_dir/name/version/checkpoints`); default: the run's directory."""

    def __init__(self, name: str | None = None, workspace: str | os.PathLike | None = None,
                 config: Mapping[str, Any] | None = None, *, id: str | None = None, resume: bool = False,
                 loss_key: str | None = None, save_dir: str | os.PathLike | None = None):
        super().__init__()
        from torchdeck.errors import InvalidRequest

        if loss_key is not None and (not isinstance(loss_key, str) or not loss_key):
            raise InvalidRequest(f"loss_key must be a metric's name, not {loss_key!r}", field="loss_key")
        if save_dir is not None and not isinstance(save_dir, (str, os.PathLike)):
            raise InvalidRequest(f"save_dir must be a path, not {type(save_dir).__name__}", field="save_dir")
        self._session = Session(name=name, workspace=workspace, config=config, id=id, resume=resume)
        self._loss_key = loss_key
        self._save_dir = os.fspath(save_dir) if save_dir is not None else None
        self._trainer: weakref.ref | None = None
        self._served: weakref.WeakSet = weakref.WeakSet()  # the Trainers whose runs this logger wrote
        _register_with_other_lightning(type(self))  # the other package may have been imported since

    # -- what Lightning asks ----------------------------------------------------------------------
    @property
    def experiment(self) -> api.Run:
        """The torchdeck run (a run that does nothing on ranks other than 0). Lightning asks for it
        as each fit, validate or test sets up: a Trainer this logger has not served yet, once
        the run has ended, starts a run of its own (its steps start again)."""
        _register_with_other_lightning(type(self))  # the other package may have been imported since
        if not _rank_zero():
            return api._NoOpRun()
        session = self._session
        trainer = _trainer_on_stack()
        if trainer is not None:
            if trainer not in self._served and session.run is not None and session.run.finished:
                session.run = None
            self._served.add(trainer)
            self._remember_trainer(trainer)
        return session.run or session.open()  # an ended run stays ended until written to

    @property
    def name(self) -> str:
        return self._session.name or "torchdeck"

    @property
    def version(self) -> str | None:
        if not _rank_zero():
            return None
        run = self._session.run or self._session.open()
        return run.id or None

    @property
    def save_dir(self) -> str | None:
        if self._save_dir is not None:
            return self._save_dir
        return self.log_dir

    @property
    def log_dir(self) -> str | None:
        """The run's directory (None on ranks other than 0)."""
        if not _rank_zero():
            return None
        run = self._session.run or self._session.open()
        return str(run.path) if run.path is not None else None

    @property
    def root_dir(self) -> str | None:
        log_dir = self.log_dir
        return os.path.dirname(log_dir) if log_dir else None

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if not _rank_zero() or params is None:
            return
        values = plain(params)
        if not isinstance(values, dict):
            values = {"hparams": values}
        self._session.open().update_config(values)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        # Lightning hands over the LightningModule once a fit starts: its Trainer is the one a
        # stop request must reach (a logger is given no other way to it).
        self._remember_trainer(getattr(model, "_trainer", None))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not _rank_zero():
            return
        if not isinstance(metrics, Mapping):  # a direct call's mistake: the API names it, training goes on
            self._session.open().log(metrics, step=None)
            return
        values = dict(metrics)
        key = self._main_loss_key(values)
        if key is not None and key != "loss" and key in values and "loss" not in values:
            values["loss"] = values[key]
        if step is not None:
            try:
                step = int(step) + 1
            except (TypeError, ValueError):
                step = None  # the API's next step
        self._session.log(values, step)
        if self._session.should_stop():
            self._stop_trainer()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if not _rank_zero():
            return
        cb = checkpoint_callback
        path = getattr(cb, "_last_checkpoint_saved", "") or getattr(cb, "last_model_path", "") or getattr(
            cb, "best_model_path", "")
        if not path or not os.path.exists(path):
            return
        step = getattr(cb, "_last_global_step_saved", None)
        trainer = self._trainer() if self._trainer is not None else None
        epoch = getattr(trainer, "current_epoch", 0) if trainer is not None else 0
        role = ("best" if path == getattr(cb, "best_model_path", None)
                else "last" if path == getattr(cb, "last_model_path", None) else "")
        self._session.open().record_checkpoint(path, step if isinstance(step, int) and step > 0 else None,
                                               epoch=epoch if isinstance(epoch, int) else 0, reason=role)

    def save(self) -> None:
        # Lightning calls this after every log_metrics: the run writes its chunks on its own clock.
        pass

    def finalize(self, status: str) -> None:
        """Lightning's word on the end: "success" (fit, test, ... returned), "failed" (an exception,
        Ctrl-C included: read from the exception being handled), "finished" (SLURM requeue)."""
        if not _rank_zero():
            return
        session = self._session
        if session.run is None or session.run.finished:
            return
        exc = sys.exc_info()[1]
        if status == "success":
            session.finish_open()
        elif exc is not None:  # as the API's excepthook: Ctrl-C, or the SIGTERM of a stop -> stopped
            session.in_training = False
            session.run._end_with_exception(type(exc), exc)
        elif status == "failed":
            session.finish_open("failed", "Lightning reported a failure")
        else:
            session.finish_open("stopped", f"Lightning ended the run ({status})")

    # -- helpers ----------------------------------------------------------------------------------
    def _main_loss_key(self, values: Mapping[str, Any]) -> str | None:
        if self._loss_key is None:
            if "loss" in values:
                self._loss_key = "loss"
            else:
                self._loss_key = next((k for k in LOSS_KEYS if k in values), None)
        return self._loss_key

    def _remember_trainer(self, trainer: Any) -> None:
        if trainer is not None and hasattr(trainer, "should_stop"):
            self._trainer = weakref.ref(trainer)

    def _stop_trainer(self) -> None:
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is None:  # log_graph was not called (hyper-parameter logging turned off)
            trainer = _trainer_on_stack()
            self._remember_trainer(trainer)
        if trainer is not None:
            trainer.should_stop = True
        else:
            self._session.run._warn_once("\0lightning-stop", "a stop was asked but the Trainer could not be "
                                         "found: it is not stopped")

    def __getstate__(self) -> dict[str, Any]:
        # Sent to spawned processes (ddp_spawn): the copy has no run of this process's, no Trainer.
        state = self.__dict__.copy()
        state["_trainer"] = None
        state["_served"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._served = weakref.WeakSet()


def _trainer_on_stack() -> Any:
    """The Trainer a few frames up (the setup hook's `trainer`, the logger connector's
    `self.trainer`), or None: Lightning hands a logger no Trainer of its own accord."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        local = frame.f_locals
        for trainer in (local.get("trainer"), _attribute(local.get("self"), "trainer")):
            if trainer is not None and hasattr(trainer, "should_stop") and hasattr(trainer, "fit_loop"):
                return trainer
        frame = frame.f_back
    return None


def _attribute(obj: Any, name: str) -> Any:
    """obj.name, or None where reading it fails (a LightningModule's `trainer` raises when it has none)."""
    if obj is None:
        return None
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001
        return None


_register_with_other_lightning(TorchdeckLogger)
