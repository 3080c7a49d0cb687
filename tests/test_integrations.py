"""The framework integrations driven by the real frameworks (issue 11): Lightning's Trainer (both
`lightning.pytorch` and `pytorch_lightning`) with torchdeck.integrations.lightning.TorchdeckLogger,
and Hugging Face's Trainer with torchdeck.integrations.transformers.TorchdeckCallback, on tiny
models and data made here (CPU, no downloads). What they wrote is read back as every reader
reads it: `runs show --json` and RunView.

The frameworks come from the `real` test extra; without them these tests skip, naming what to
install; under `make test` (TORCHDECK_REAL_REQUIRED=1) they fail. Trainers run in this process
(the API's process-wide hooks are not needed for what is checked here), except where an
exception must escape the script: that runs as a real child script.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from helpers import cli_cmd, cli_env
from torchdeck import api
from torchdeck.errors import InvalidRequest
from torchdeck.runs.store import RunStore
from torchdeck.runs.view import load
from torchdeck.tui.cli import main as cli_main
from torchdeck.workspace import Workspace

REQUIRED = os.environ.get("TORCHDECK_REAL_REQUIRED") == "1"
EXTRA = "pip install -c .ci/constraints.txt -e '.[test,real]' (make test does)"
STOP_DEADLINE = 20.0  # seconds a trainer waits for a stop before it ends by itself (runs stop's grace is 30)


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        if REQUIRED:
            pytest.fail(f"{module} is missing: {EXTRA}. TORCHDECK_REAL_REQUIRED=1 asks for every real-library test")
        pytest.skip(f"{module} is missing: {EXTRA}")


@pytest.fixture(autouse=True)
def _no_current_run(monkeypatch):
    """Each test starts with no current run, outside torchrun and any wrapper."""
    for var in ("RANK", "LOCAL_RANK", api.RUN_DIR_ENV):
        monkeypatch.delenv(var, raising=False)
    yield
    if api._current is not None and not api._current.finished:
        api._current.finish()
    api._current = None


def show(ws: Path, capsys, run: str) -> dict:
    capsys.readouterr()
    code = cli_main(["--workspace", str(ws), "runs", "show", run, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def view_of(ws: Path, run_id: str):
    return load(RunStore(Workspace.open(ws)).get(run_id))


def logging_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, api.LoggingWarning)]


def start_stop_command(ws: Path, run_id: str) -> subprocess.Popen:
    """`torchdeck runs stop RUN --json`, as a user types it, without waiting for it."""
    return subprocess.Popen(cli_cmd("--workspace", str(ws), "runs", "stop", run_id, "--json"), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    return json.loads(out)


# -- Lightning ------------------------------------------------------------------------------------
LIGHTNING = ("lightning.pytorch", "pytorch_lightning")


def tiny_module(L, *, fail_at: int | None = None, at_step=None):
    """A LightningModule of the package `L`: 4 -> 8 -> 1 regression, "train_loss" every step,
    "val_loss" and "test_loss" per epoch. `fail_at`: raises in that step; `at_step(module, step)`
    is called before each step (1-based)."""
    import torch

    class Tiny(L.LightningModule):
        def __init__(self, lr: float = 0.05, hidden: int = 8, sizes=(4, 8, 1)):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

        def training_step(self, batch, batch_idx):
            step = self.global_step + 1
            if at_step is not None:
                at_step(self, step)
            if fail_at is not None and step == fail_at:
                raise RuntimeError(f"boom at step {step}")
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    return Tiny()


def loaders():
    """40 training samples in batches of 4 (10 steps an epoch), 8 for validation."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    y = x.sum(1, keepdim=True)
    train = torch.utils.data.TensorDataset(x[:40], y[:40])
    val = torch.utils.data.TensorDataset(x[40:], y[40:])
    return (torch.utils.data.DataLoader(train, batch_size=4), torch.utils.data.DataLoader(val, batch_size=4))


def lightning_trainer(L, tmp_path: Path, logger, *, max_steps: int = 20, checkpoint: bool = True):
    callbacks = [L.callbacks.ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)] if checkpoint else []
    return L.Trainer(max_steps=max_steps, log_every_n_steps=1, logger=logger, accelerator="cpu", devices=1,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     enable_checkpointing=checkpoint, callbacks=callbacks, default_root_dir=tmp_path / "root")


@pytest.mark.parametrize("package", LIGHTNING)
def test_a_lightning_fit_is_a_finished_run_with_every_step_the_hparams_and_the_checkpoints(
        package, tmp_path, capsys):
    L = _need(package)
    from torchdeck.integrations.lightning import TorchdeckLogger

    ws = tmp_path / "ws"
    logger = TorchdeckLogger(name=f"fit-{package}", workspace=ws, config={"data": "tiny regression"})
    trainer = lightning_trainer(L, tmp_path, logger)
    assert isinstance(trainer.logger, L.loggers.Logger) and trainer.logger is logger  # accepted by this Trainer
    module = tiny_module(L)
    train, val = loaders()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train, val)
    assert logging_warnings(caught) == []  # no step went back, nothing logged twice

    doc = show(ws, capsys, f"fit-{package}")
    assert doc["state"] == "finished" and doc["name"] == f"fit-{package}" and doc["id"] == logger.version
    assert doc["step"] == 20
    assert doc["params"] == {"data": "tiny regression", "lr": 0.05, "hidden": 8, "sizes": [4, 8, 1]}
    view = view_of(ws, doc["id"])
    # every step's training loss, as the run's loss curve (1-based steps) and under its own name
    assert view.metrics["loss"].steps_array().tolist() == list(range(1, 21))
    assert view.metrics["train_loss"].values_array().tolist() == view.metrics["loss"].values_array().tolist()
    assert view.metrics["val_loss"].steps_array().tolist() == [10, 20]  # merged into the epoch's last step
    assert view.metrics["epoch"].steps_array().tolist() == list(range(1, 21))
    assert view.metrics["epoch"].values_array().tolist() == [0.0] * 10 + [1.0] * 10
    assert doc["last_loss"] == pytest.approx(float(trainer.callback_metrics["train_loss"]))

    # the checkpoints ModelCheckpoint keeps, by path, in the run's directory by default
    ckpt = trainer.checkpoint_callback
    listed = {c["path"]: c for c in doc["checkpoints"]}
    on_disk = {str(p) for p in Path(ckpt.dirpath).glob("*.ckpt")}
    assert set(listed) == on_disk and {ckpt.best_model_path, ckpt.last_model_path} <= on_disk
    assert Path(ckpt.dirpath).is_relative_to(Path(doc["path"]))
    assert listed[ckpt.last_model_path]["reason"] == "last" and listed[ckpt.last_model_path]["step"] == 20
    best = listed[ckpt.best_model_path]
    assert best["reason"] == "best" and best["step"] == int(best["name"].split("step=")[1].split(".")[0])

    assert RunStore(Workspace.open(ws)).get(doc["id"]).summary().checkpoints == len(on_disk)

    # test() after fit: the same run goes on and ends again
    trainer.test(module, val, verbose=False)
    doc = show(ws, capsys, f"fit-{package}")
    assert doc["state"] == "finished" and doc["metrics"]["test_loss"]["count"] == 1
    assert doc["metrics"]["loss"]["count"] == 20 and len(RunStore(Workspace.open(ws)).runs()) == 1

    # the same logger given to another Trainer (the next fold): a run of its own, steps from 1 again
    first = doc["id"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lightning_trainer(L, tmp_path, logger, max_steps=10, checkpoint=False).fit(tiny_module(L), train, val)
    assert logging_warnings(caught) == []
    second = logger.version
    assert second != first and show(ws, capsys, first)["metrics"]["loss"]["count"] == 20
    doc = show(ws, capsys, second)
    assert doc["state"] == "finished" and doc["name"] == f"fit-{package}" and doc["metrics"]["loss"]["count"] == 10
    assert doc["params"]["lr"] == 0.05


async def test_a_lightning_run_on_the_training_screen_shows_its_checkpoints_paths(tmp_path):
    L = _need("lightning.pytorch")
    from torchdeck.integrations.lightning import TorchdeckLogger
    from torchdeck.runs.config import RunConfig
    from torchdeck.tui.app import TorchdeckApp
    from tui_helpers import log_lines, screen_text, wait_for

    ws = Workspace.open(tmp_path / "ws")
    logger = TorchdeckLogger(name="on-screen", workspace=ws.root)
    trainer = lightning_trainer(L, tmp_path, logger)
    trainer.fit(tiny_module(L), *loaders())
    app = TorchdeckApp(ws, default_config=RunConfig(epochs=1, dataset_size=4096))
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.current_run == logger.version and screen.history_done
                       and "finished" in screen_text(app), 20, "the Lightning run on the Training screen")
        text = screen_text(app)
        assert "on-screen" in text and "step 20" in text, text
        lines = log_lines(screen)
        last = trainer.checkpoint_callback.last_model_path
        assert f"checkpoint last.ckpt recorded (last): {last}" in lines, lines[-6:]


def test_a_lightning_module_that_raises_at_step_5_fails_the_run_with_the_error(tmp_path, capsys):
    L = _need("lightning.pytorch")
    from torchdeck.integrations.lightning import TorchdeckLogger

    ws = tmp_path / "ws"
    logger = TorchdeckLogger(name="boom", workspace=ws)
    trainer = lightning_trainer(L, tmp_path, logger, checkpoint=False)
    with pytest.raises(RuntimeError, match="boom at step 5"):
        trainer.fit(tiny_module(L, fail_at=5), *loaders())
    doc = show(ws, capsys, "boom")
    assert doc["state"] == "failed" and "RuntimeError: boom at step 5" in doc["message"]
    assert doc["metrics"]["loss"]["count"] == 4 and doc["step"] == 4
    assert not RunStore(Workspace.open(ws)).get("boom").writer_alive()


def test_a_stop_asked_with_runs_stop_mid_fit_ends_the_lightning_run_stopped(tmp_path, capsys):
    L = _need("lightning.pytorch")
    from torchdeck.integrations.lightning import TorchdeckLogger

    ws = tmp_path / "ws"
    logger = TorchdeckLogger(name="long-fit", workspace=ws)
    stopper: dict = {}

    def at_step(module, step):
        if step == 5:
            stopper["proc"], stopper["t0"] = start_stop_command(ws, logger.version), time.monotonic()
        elif step > 5 and time.monotonic() - stopper["t0"] > STOP_DEADLINE:
            module.trainer.should_stop = True  # the stop never came: end by itself, and fail below

    trainer = lightning_trainer(L, tmp_path, logger, max_steps=1_000_000, checkpoint=False)
    trainer.fit(tiny_module(L, at_step=at_step), *loaders())
    assert stop_result(stopper["proc"])["state"] == "stopped"
    doc = show(ws, capsys, "long-fit")
    assert doc["state"] == "stopped", doc["message"]
    assert 5 <= doc["step"] < 1_000_000 and doc["metrics"]["loss"]["count"] == doc["step"]
    assert time.monotonic() - stopper["t0"] < STOP_DEADLINE


def test_ctrl_c_in_a_lightning_fit_ends_the_run_stopped(tmp_path, capsys):
    """Lightning catches KeyboardInterrupt, tells its loggers "failed" and exits 1: the run reads
    the exception being handled and ends "stopped", as a script's Ctrl-C does."""
    import signal

    L = _need("lightning.pytorch")
    from torchdeck.integrations.lightning import TorchdeckLogger

    def interrupt(module, step):
        if step == 3:
            raise KeyboardInterrupt

    ws = tmp_path / "ws"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            lightning_trainer(L, tmp_path, TorchdeckLogger(name="ctrl-c", workspace=ws), checkpoint=False).fit(
                tiny_module(L, at_step=interrupt), *loaders())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C from then on
    doc = show(ws, capsys, "ctrl-c")
    assert doc["state"] == "stopped" and doc["message"] == "KeyboardInterrupt" and doc["step"] == 2


def test_the_sigterm_of_an_unanswered_stop_ends_a_lightning_run_stopped(tmp_path, capsys):
    """`runs stop` escalates to SIGTERM when its request goes unanswered; Lightning only logs a
    SIGTERM, the API's handler (installed with the run) ends the fit, and the run reads stopped."""
    import signal

    L = _need("lightning.pytorch")
    from torchdeck.integrations.lightning import TorchdeckLogger

    def terminate(module, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    ws = tmp_path / "ws"
    handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a script: the API installs its handler at init
    try:
        with pytest.raises(SystemExit):
            lightning_trainer(L, tmp_path, TorchdeckLogger(name="term", workspace=ws), checkpoint=False).fit(
                tiny_module(L, at_step=terminate), *loaders())
    finally:
        signal.signal(signal.SIGTERM, handler)
    doc = show(ws, capsys, "term")
    assert doc["state"] == "stopped" and doc["step"] == 2, doc["message"]


def test_ranks_other_than_zero_write_nothing(tmp_path, monkeypatch):
    """Lightning's rank (one counter for both packages) and Hugging Face's world process zero."""
    _need("lightning.pytorch")
    transformers = _need("transformers")
    from lightning_utilities.core.rank_zero import rank_zero_only
    from torchdeck.integrations.lightning import TorchdeckLogger
    from torchdeck.integrations.transformers import TorchdeckCallback

    ws = tmp_path / "ws"
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = TorchdeckLogger(name="rank1", workspace=ws)
    assert logger.version is None and logger.log_dir is None and logger.experiment.state == "no-op"
    logger.log_hyperparams({"lr": 1})
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.finalize("success")
    state = transformers.TrainerState(is_world_process_zero=False)
    cb = TorchdeckCallback(name="rank1", workspace=ws)
    args = hf_args(transformers, tmp_path / "out")
    control = transformers.TrainerControl()
    cb.on_train_begin(args, state, control)
    cb.on_log(args, state, control, logs={"loss": 1.0})
    cb.on_train_end(args, state, control)
    assert cb.run is None
    assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())


def test_logging_after_the_end_into_a_run_another_process_took_warns_and_training_goes_on(tmp_path, capsys):
    L = _need("lightning.pytorch")
    from torchdeck.integrations.lightning import TorchdeckLogger

    ws = tmp_path / "ws"
    logger = TorchdeckLogger(name="taken", workspace=ws)
    trainer = lightning_trainer(L, tmp_path, logger, max_steps=3, checkpoint=False)
    train, val = loaders()
    trainer.fit(tiny_module(L), train, val)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, torchdeck
        run = torchdeck.init(id={logger.version!r}, workspace={str(ws)!r})
        print("HELD", flush=True)
        sys.stdin.read()  # until the test closes it
    """)], env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.warns(api.LoggingWarning, match="cannot be continued .*being written by another process"):
            results = trainer.test(tiny_module(L), val, verbose=False)
        assert "test_loss" in results[0]  # the test itself ran to its end
    finally:
        holder.stdin.close()
        holder.wait(30)
    doc = show(ws, capsys, "taken")
    assert doc["state"] == "finished" and "test_loss" not in doc["metrics"] and doc["metrics"]["loss"]["count"] == 3


def test_lightning_hyperparameters_of_every_shape_are_recorded_as_json(tmp_path, capsys):
    _need("lightning.pytorch")
    omegaconf = _need("omegaconf")
    import argparse
    import enum

    import torch
    from torchdeck.integrations.lightning import TorchdeckLogger

    class Kind(enum.Enum):
        A = "a"

    cyclic: dict = {"x": 1}
    cyclic["self"] = cyclic

    class Unprintable:
        def __repr__(self):
            raise ValueError("no repr")

    ws = tmp_path / "ws"
    logger = TorchdeckLogger(name="hp", workspace=ws)
    logger.log_hyperparams(argparse.Namespace(lr=0.1, seed=3))
    logger.log_hyperparams({
        "cfg": omegaconf.OmegaConf.create({"lr": 0.01, "base": "${lr}", "missing": "???"}),
        "t": torch.tensor(2.5), "big": torch.zeros(100), "kind": Kind.A, "path": Path("/data"),
        (1, 2): "tuple key", "fn": torch.nn.functional.relu, "cls": torch.nn.Linear, "nan": float("nan"),
        "cyclic": cyclic, "odd": Unprintable(), "set": {3, 1, 2},
    })
    logger.log_hyperparams(argparse.Namespace(lr=0.2))  # later values replace earlier ones of the same name
    logger.finalize("success")
    params = show(ws, capsys, "hp")["params"]
    assert params["lr"] == 0.2 and params["seed"] == 3
    assert params["cfg"] == {"lr": 0.01, "base": 0.01, "missing": "???"}
    assert params["t"] == 2.5 and params["big"] == "tensor of shape [100] (torch.float32)"
    assert params["kind"] == "a" and params["path"] == "/data" and params["(1, 2)"] == "tuple key"
    assert params["fn"] == "torch.nn.functional.relu" and params["cls"] == "torch.nn.modules.linear.Linear"
    assert params["set"] == [1, 2, 3] and params["odd"] == "<Unprintable>" and params["cyclic"]["x"] == 1
    assert params["nan"] != params["nan"]  # NaN kept (Python's json reads it)


def test_the_lightning_logger_refuses_bad_arguments_naming_them():
    _need("lightning.pytorch")
    from torchdeck.integrations.lightning import TorchdeckLogger

    for kwargs, field in (({"name": 3}, "name"), ({"config": [1]}, "config"), ({"workspace": 1.5}, "workspace"),
                          ({"loss_key": ""}, "loss_key"), ({"save_dir": 7}, "save_dir")):
        with pytest.raises(InvalidRequest) as e:
            TorchdeckLogger(**kwargs)
        assert e.value.field == field, kwargs


# -- Hugging Face ---------------------------------------------------------------------------------
def tiny_bert(transformers):
    """A 1-layer, 16-wide BertForSequenceClassification made here (no download)."""
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config)


class Pairs:
    """n tokenised examples of 8 tokens with a label (a map-style dataset of dicts)."""

    def __init__(self, n: int, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 32, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.ids[i] * 0 + 1, "labels": self.labels[i]}


def hf_args(transformers, out: Path, **kw):
    settings = dict(output_dir=str(out), report_to=[], logging_steps=1, max_steps=20, use_cpu=True,
                    per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=1e-3,
                    disable_tqdm=True, seed=0, save_only_model=True)
    settings.update(kw)
    return transformers.TrainingArguments(**settings)


def test_a_hugging_face_train_is_a_finished_run_with_every_step_evals_checkpoints_and_hparams(tmp_path, capsys):
    transformers = _need("transformers")
    from torchdeck.integrations.transformers import TorchdeckCallback

    ws = tmp_path / "ws"
    cb = TorchdeckCallback(name="bert-tiny", workspace=ws, config={"task": "parity"})
    args = hf_args(transformers, tmp_path / "out", eval_strategy="steps", eval_steps=10, save_steps=10)
    trainer = transformers.Trainer(model=tiny_bert(transformers), args=args, train_dataset=Pairs(40),
                                   eval_dataset=Pairs(8, seed=1), callbacks=[cb])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert logging_warnings(caught) == []

    doc = show(ws, capsys, "bert-tiny")
    assert doc["state"] == "finished" and doc["name"] == "bert-tiny" and doc["id"] == cb.run.id and doc["step"] == 20
    view = view_of(ws, doc["id"])
    for name in ("loss", "learning_rate", "grad_norm", "epoch"):
        assert view.metrics[name].steps_array().tolist() == list(range(1, 21)), name
    history = trainer.state.log_history
    assert view.metrics["loss"].values_array().tolist() == pytest.approx([h["loss"] for h in history if "loss" in h])
    assert view.metrics["learning_rate"].values_array().tolist() == pytest.approx(
        [h["learning_rate"] for h in history if "learning_rate" in h])
    assert view.metrics["eval_loss"].steps_array().tolist() == [10, 20]
    assert doc["metrics"]["train_loss"]["count"] == 1  # the run's totals at its end
    params = doc["params"]
    assert params["task"] == "parity"
    assert params["training_args"]["learning_rate"] == 1e-3 and params["training_args"]["max_steps"] == 20
    assert params["model_config"]["hidden_size"] == 16 and params["model_config"]["num_hidden_layers"] == 1
    listed = {c["name"]: c for c in doc["checkpoints"]}
    assert set(listed) == {"checkpoint-10", "checkpoint-20"}
    for n in (10, 20):
        c = listed[f"checkpoint-{n}"]
        assert c["step"] == n and c["path"] == str(tmp_path / "out" / f"checkpoint-{n}") and Path(c["path"]).is_dir()

    # after train(): evaluate() and the script's own trainer.log() go on in the same run, ended again;
    # what was already logged at the last step stands, a value that is not a number is named once
    trainer.evaluate()  # the same evaluation at the same step: nothing new
    trainer.evaluate(Pairs(8, seed=2), metric_key_prefix="test")
    with pytest.warns(api.LoggingWarning, match="'note'"):
        trainer.log({"note": "a string", "custom": 2.0})
    doc = show(ws, capsys, "bert-tiny")
    assert doc["state"] == "finished" and doc["step"] == 20
    assert [doc["metrics"][k]["count"] for k in ("eval_loss", "epoch", "test_loss", "custom")] == [2, 20, 1, 1]
    assert "note" not in doc["metrics"]
    assert doc["last_loss"] == pytest.approx(view.metrics["loss"].values_array().tolist()[-1])
    assert len(RunStore(Workspace.open(ws)).runs()) == 1


def test_checkpoints_a_hugging_face_trainer_deleted_are_not_listed(tmp_path, capsys):
    transformers = _need("transformers")
    from torchdeck.integrations.transformers import TorchdeckCallback

    ws = tmp_path / "ws"
    cb = TorchdeckCallback(name="rotating", workspace=ws)
    args = hf_args(transformers, tmp_path / "out", max_steps=6, save_steps=2, save_total_limit=1)
    transformers.Trainer(model=tiny_bert(transformers), args=args, train_dataset=Pairs(40), callbacks=[cb]).train()
    doc = show(ws, capsys, "rotating")
    assert [c["name"] for c in doc["checkpoints"]] == ["checkpoint-6"]  # 2 and 4 were rotated away
    assert len(view_of(ws, doc["id"]).recorded_checkpoint_paths) == 3  # the records stay
    assert RunStore(Workspace.open(ws)).summaries()[0].checkpoints == 1


def test_a_stop_asked_with_runs_stop_mid_train_ends_the_hugging_face_run_stopped(tmp_path, capsys):
    transformers = _need("transformers")
    from torchdeck.integrations.transformers import TorchdeckCallback

    ws = tmp_path / "ws"
    cb = TorchdeckCallback(name="long-train", workspace=ws)
    stopper: dict = {}

    class StopAtStep5(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                stopper["proc"], stopper["t0"] = start_stop_command(ws, cb.run.id), time.monotonic()
            elif state.global_step > 5 and time.monotonic() - stopper["t0"] > STOP_DEADLINE:
                control.should_training_stop = True  # the stop never came: end by itself, and fail below

    args = hf_args(transformers, tmp_path / "out", max_steps=1_000_000, save_strategy="no", logging_steps=50)
    trainer = transformers.Trainer(model=tiny_bert(transformers), args=args, train_dataset=Pairs(40),
                                   callbacks=[cb, StopAtStep5()])
    trainer.train()
    assert stop_result(stopper["proc"])["state"] == "stopped"
    doc = show(ws, capsys, "long-train")
    assert doc["state"] == "stopped" and 5 <= trainer.state.global_step < 1_000_000
    assert time.monotonic() - stopper["t0"] < STOP_DEADLINE


HF_FAILING_SCRIPT = """
    import sys
    sys.path.insert(0, {tests!r})
    import torch, transformers
    from test_integrations import Pairs, hf_args, tiny_bert
    from torchdeck.integrations.transformers import TorchdeckCallback

    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = tiny_bert(transformers)
            self.calls = 0

        def forward(self, input_ids, attention_mask=None, labels=None):
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError(f"boom in forward {{self.calls}}")
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    cb = TorchdeckCallback(name="hf-boom", workspace={ws!r})
    for attempt in (1, 2):
        trainer = transformers.Trainer(model=Failing(), args=hf_args(transformers, {out!r} + str(attempt)),
                                       train_dataset=Pairs(40), callbacks=[cb])
        if attempt == 1:
            try:
                trainer.train()
            except RuntimeError as e:
                print("CAUGHT", cb.run.id, e, flush=True)
        else:
            print("SECOND", cb.run.id if cb.run else None, flush=True)
            trainer.train()  # raises out of the script
"""


def test_an_exception_out_of_hugging_face_train_fails_the_run_caught_or_not(tmp_path, capsys):
    _need("transformers")
    ws = tmp_path / "ws"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(HF_FAILING_SCRIPT.format(tests=str(Path(__file__).parent), ws=str(ws),
                                                               out=str(tmp_path / "out"))))
    p = subprocess.run([sys.executable, str(script)], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "RuntimeError: boom in forward 5" in p.stderr  # the traceback is still printed
    caught_id = p.stdout.split("CAUGHT ")[1].split()[0]
    runs = {r.id: r for r in RunStore(Workspace.open(ws)).runs()}
    assert len(runs) == 2
    first = show(ws, capsys, caught_id)  # caught by the script: ended when the next train() began
    assert first["state"] == "failed" and "did not end" in first["message"] and first["step"] == 4
    [second_id] = set(runs) - {caught_id}
    second = show(ws, capsys, second_id)  # uncaught: the excepthook's, with the exception's line
    assert second["state"] == "failed" and second["message"] == "RuntimeError: boom in forward 5"
    assert second["metrics"]["loss"]["count"] == 4 and second["name"] == "hf-boom"


def test_the_hugging_face_callback_refuses_bad_arguments_naming_them():
    _need("transformers")
    from torchdeck.integrations.transformers import TorchdeckCallback

    for kwargs, field in (({"name": ["x"]}, "name"), ({"config": "lr=1"}, "config")):
        with pytest.raises(InvalidRequest) as e:
            TorchdeckCallback(**kwargs)
        assert e.value.field == field


# -- without the frameworks -----------------------------------------------------------------------
BLOCKING = """
    import sys
    class NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, NotInstalled())
    import torchdeck.integrations
    try:
        import torchdeck.integrations.{module}
    except ImportError as e:
        print("IMPORT ERROR:", e)
    print("HEAVY", sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "lightning", "pytorch_lightning",
                                                                    "transformers"}}))
"""


@pytest.mark.parametrize("module, blocked, hint", [
    ("lightning", ("lightning", "pytorch_lightning"), "pip install lightning (or pip install pytorch-lightning)"),
    ("transformers", ("transformers",), "pip install transformers"),
])
def test_without_the_framework_the_import_error_says_what_to_install(module, blocked, hint):
    code = textwrap.dedent(BLOCKING.format(blocked=set(blocked), module=module))
    p = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"IMPORT ERROR: torchdeck.integrations.{module} needs" in p.stdout and hint in p.stdout, p.stdout
    assert "HEAVY []" in p.stdout
