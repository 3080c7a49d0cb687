"""A Hugging Face TrainerCallback that makes each `trainer.train()` a torchdeck run.

    from torchdeck.integrations.transformers import TorchdeckCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[TorchdeckCallback(name="bert-ft")])
    trainer.train()

- `on_train_begin` (world process zero only) makes the run; its config (`params`) holds the
  TrainingArguments (`training_args`, as `args.to_dict()`) and the model's config
  (`model_config`, when the model has one), beside `config=`. Each `train()` is a run of its own
  (Hugging Face counts its steps from 0 again).
- `on_log`: every logged entry at `state.global_step`, names as Hugging Face gives them ("loss",
  the run's main curve; "learning_rate", "grad_norm", "eval_loss", "epoch", the run's totals at
  its end). A value that is not a number is skipped with one warning naming it. Logs after
  `train()` ended (`trainer.evaluate()`) continue the same run and end it again.
- `on_save`: the `checkpoint-N` folder, by its path ("best" when it is the Trainer's best so far).
- `on_train_end` -> finished, or stopped when a stop was asked: a stop from the TUI or
  `torchdeck runs stop` is seen at the next step's end and sets `control.should_training_stop`.
- An exception out of `trainer.train()` is seen by no callback: uncaught, the logging API's
  excepthook ends the run "failed" with the exception's line (Ctrl-C: "stopped"); caught by the
  script, the run ends "failed" at the next `train()` or when the process exits.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from torchdeck import api
from torchdeck.integrations._common import Session, plain

try:
    from transformers import TrainerCallback
except ModuleNotFoundError as e:  # pragma: no cover - exercised without the library
    if e.name != "transformers":
        raise
    raise ImportError("torchdeck.integrations.transformers needs transformers: pip install transformers") from None

__all__ = ["TorchdeckCallback"]

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


class TorchdeckCallback(TrainerCallback):
    """Streams a Hugging Face Trainer's logs, hyper-parameters and checkpoints into a torchdeck
    run (see the module's docstring). name: the run's name. workspace: its workspace (default:
    as `torchdeck.init`). config: settings recorded beside the Trainer's. id/resume: as
    `torchdeck.init`."""

    def __init__(self, name: str | None = None, workspace: str | os.PathLike | None = None,
                 config: Mapping[str, Any] | None = None, *, id: str | None = None, resume: bool = False):
        self._session = Session(name=name, workspace=workspace, config=config, id=id, resume=resume)

    @property
    def run(self) -> api.Run | None:
        """The torchdeck run (None before the first `train()`, and on other processes)."""
        return self._session.run

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        params: dict[str, Any] = {}
        try:
            params["training_args"] = plain(args.to_dict())
        except Exception:  # noqa: BLE001  (a hyper-parameter the library cannot write must not stop training)
            params["training_args"] = plain(vars(args))
        model_config = getattr(model, "config", None)
        if model_config is not None:
            to_dict = getattr(model_config, "to_dict", None)
            try:
                params["model_config"] = plain(to_dict() if callable(to_dict) else model_config)
            except Exception:  # noqa: BLE001
                params["model_config"] = plain(model_config)
        session = self._session
        if session.run is None:
            session.open(params)
        else:
            session.new_run(params)
        session.in_training = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        session = self._session
        session.log(logs, state.global_step)
        if not session.in_training:  # after train() (evaluate, predict): written and ended at once
            session.finish_open()

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self._session.in_training and self._session.should_stop():
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self._session.run is None:
            return
        path = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}-{state.global_step}")
        if not os.path.isdir(path):
            return  # saved elsewhere (a hyper-parameter search's trial folder): nothing to point at
        best = state.best_model_checkpoint
        role = "best" if best and os.path.abspath(best) == os.path.abspath(path) else ""
        self._session.open().record_checkpoint(path, state.global_step, epoch=int(state.epoch or 0), reason=role)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._session.finish_open()
