"""A run's configuration: the optimizer, schedule and loss built from it (a schedule resumes
exactly), `torchdeck train`'s flags, `--config FILE` and its precedence, and resumes refusing
a setting."""

from __future__ import annotations

import math

import pytest
import torch
from torchdeck.errors import InvalidRequest
from torchdeck.options import (
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    build_loss,
    build_optimizer,
    build_scheduler,
    make_loss,
    make_optimizer,
    make_scheduler,
)
from torchdeck.runs import config_file
from torchdeck.runs.config import RunConfig
from torchdeck.tui.cli import build_parser, main
from torchdeck.tui.cli.runs import FLAG_SETTINGS, RUN_FLAGS, config_from_args
from torchdeck.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def _step(model, opt, sched=None):
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if sched is not None and not isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step()
    return loss.item()


# -- building ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_builds_with_its_settings_and_steps(name):
    extra = {"sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
             "rmsprop": {"momentum": 0.5, "weight_decay": 1e-3},
             "adam": {"betas": [0.8, 0.99], "weight_decay": 1e-2},
             "adamw": {"betas": [0.85, 0.995]}}[name]
    cfg = RunConfig(optimizer=name, lr=0.05, **extra).validate()
    model = _model()
    opt = build_optimizer(cfg, model.parameters())
    group = opt.param_groups[0]
    assert group["lr"] == 0.05
    for key, value in extra.items():
        assert group[key] == (tuple(value) if key == "betas" else value)
    if name == "adamw":
        assert group["weight_decay"] == 0.01  # not given: AdamW's own
    before = model.weight.detach().clone()
    _step(model, opt)
    assert not torch.equal(before, model.weight)


def test_make_builders_still_work():
    model = _model()
    opt = make_optimizer("adam", model.parameters(), 0.1)
    assert make_scheduler("constant", opt, 10) is None
    assert make_scheduler("cosine", opt, 10) is not None
    assert make_loss("mse")(torch.zeros(2, 3), torch.tensor([0, 2])).item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_each_schedule_builds_and_steps(name):
    cfg = RunConfig(schedule=name, lr=0.1, warmup_steps=0 if name == "plateau" else 3).validate()
    model = _model()
    opt = build_optimizer(cfg, model.parameters())
    sched = build_scheduler(cfg, opt, 20)
    assert sched is not None
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    for _ in range(20):
        _step(model, opt, sched)
    if name == "plateau":
        assert sched.mode == "min"
        for _ in range(10):
            sched.step(1.0)
        assert opt.param_groups[0]["lr"] < 0.1
        acc = build_scheduler(RunConfig(schedule="plateau", best_metric="val_accuracy"), opt, 20)
        assert acc.mode == "max"


def test_constant_without_warmup_has_no_scheduler():
    opt = build_optimizer(RunConfig(), _model().parameters())
    assert build_scheduler(RunConfig(), opt, 10) is None


def _lrs(cfg, total, steps, state=None):
    model = _model()
    opt = build_optimizer(cfg, model.parameters())
    sched = build_scheduler(cfg, opt, total)
    if state is not None:
        opt.load_state_dict(state[0])
        sched.load_state_dict(state[1])
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        _step(model, opt, sched)
    return out, (opt.state_dict(), sched.state_dict())


@pytest.mark.parametrize("name", ["cosine", "step", "onecycle", "constant"])
def test_a_schedule_resumes_exactly_from_its_state_dict(name):
    cfg = RunConfig(schedule=name, lr=0.1, warmup_steps=4).validate()
    whole, _ = _lrs(cfg, 30, 30)
    first, state = _lrs(cfg, 30, 13)
    # the state as a checkpoint holds it: through torch.save / torch.load(weights_only=True)
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    rest, _ = _lrs(cfg, 30, 17, state=state)
    assert first + rest == whole  # bit for bit


def test_plateau_resumes_exactly():
    cfg = RunConfig(schedule="plateau", lr=0.1).validate()
    opt = build_optimizer(cfg, _model().parameters())
    sched = build_scheduler(cfg, opt, 10)
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    for m in metrics[:5]:
        sched.step(m)
    opt2 = build_optimizer(cfg, _model().parameters())
    sched2 = build_scheduler(cfg, opt2, 10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for m in metrics[5:]:
        sched.step(m)
        sched2.step(m)
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] < 0.1


def test_warmup_then_cosine_values():
    lrs, _ = _lrs(RunConfig(schedule="cosine", lr=1.0, warmup_steps=4), 12, 12)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear, no step at rate 0
    # then cosine from 1 to 0 over the 8 steps left
    assert lrs[4:] == pytest.approx([(1 + math.cos(math.pi * k / 8)) / 2 for k in range(8)])
    assert lrs[8] == pytest.approx(0.5)


def test_step_and_onecycle_values():
    lrs, _ = _lrs(RunConfig(schedule="step", lr=1.0), 9, 9)
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert _lrs(RunConfig(schedule="step", lr=1.0), 2, 2)[0] == pytest.approx([1, 0.01])  # never starts cut
    lrs, _ = _lrs(RunConfig(schedule="onecycle", lr=1.0, warmup_steps=5), 20, 20)
    assert lrs[0] == pytest.approx(1 / 25) and lrs[5] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] < 0.02 and lrs == sorted(lrs[:6]) + lrs[6:]


@pytest.mark.parametrize("kind", list(LOSSES))
def test_each_loss_builds_and_computes(kind):
    out = torch.randn(4, 3, requires_grad=True)
    classes = torch.tensor([0, 2, 1, 1])
    fn = build_loss(RunConfig(loss=kind))
    loss = fn(out, classes)
    loss.backward()
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert torch.equal(fn(out, classes), make_loss(kind)(out, classes))
    assert fn(out, classes, reduction="none").shape[0] == 4


def test_label_smoothing_and_default_loss():
    out, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    smooth = build_loss(RunConfig(loss="cross_entropy", label_smoothing=0.2))(out, y)
    assert smooth.item() == pytest.approx(torch.nn.functional.cross_entropy(out, y, label_smoothing=0.2).item())
    assert build_loss(RunConfig(label_smoothing=0.1), default="cross_entropy")(out, y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(out, y, label_smoothing=0.1).item())
    with pytest.raises(InvalidRequest) as e:
        build_loss(RunConfig())
    assert e.value.field == "loss"


@pytest.mark.parametrize("changes, field", [
    ({"nesterov": True}, "nesterov"),  # no momentum
    ({"nesterov": True, "momentum": 0.9, "optimizer": "adam"}, "nesterov"),
    ({"momentum": 0.9, "optimizer": "adamw"}, "momentum"),
    ({"betas": [0.9, 0.99], "optimizer": "sgd"}, "betas"),
    ({"label_smoothing": 0.1, "loss": "mse"}, "label_smoothing"),
    ({"warmup_steps": 5, "schedule": "plateau"}, "warmup_steps"),
    ({"warmup_steps": 5, "max_steps": 5}, "warmup_steps"),
    ({"precision": "fp16", "device": "cpu"}, "precision"),
    ({"device": "gpu"}, "device"),
    ({"weight_decay": -1.0}, "weight_decay"),
])
def test_settings_that_would_be_ignored_together_are_refused(changes, field):
    with pytest.raises(InvalidRequest) as e:
        RunConfig(**changes).validate()
    assert e.value.field == field


# -- flags ---------------------------------------------------------------------------------------
FLAGS = ["--model", "demo", "--data", "synthetic:regression", "--max-steps", "50", "--batch-size", "8", "--lr", "0.02",
         "--optimizer", "SGD", "--momentum", "0.9", "--nesterov", "--weight-decay", "0.001", "--schedule", "cosine",
         "--warmup-steps", "5", "--loss", "huber", "--clip-grad-norm", "1.5",
         "--accumulate", "2", "--precision", "bf16", "--device", "cpu", "--deterministic", "--seed", "7",
         "--name", "all", "--threads", "1", "--dataset-size", "64", "--val-fraction", "0.2", "--val-every", "10",
         "--early-stop-patience", "3", "--num-workers", "0", "--collate", "mymod:collate", "--step", "mymod:step",
         "--checkpoint-every", "20", "--keep", "2", "--keep-best", "1", "--best-metric", "val_accuracy",
         "--nproc", "2", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "node0:29500"]
EXPECTED = dict(model="demo", data="synthetic:regression", max_steps=50, batch_size=8, lr=0.02, optimizer="sgd",
                momentum=0.9, nesterov=True, weight_decay=0.001, schedule="cosine", warmup_steps=5,
                loss="huber", grad_clip=1.5, accumulate=2, precision="bf16",
                device="cpu", deterministic=True, seed=7, name="all", threads=1, dataset_size=64, val_fraction=0.2,
                val_every=10, early_stop_patience=3, num_workers=0, collate="mymod:collate", step="mymod:step",
                checkpoint_every=20, keep_checkpoints=2, keep_best=1, best_metric="val_accuracy",
                nproc=2, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500")


def parse(ws, *argv):
    return config_from_args(ws, build_parser().parse_args(["train", *argv]))


MYMOD = """
import torch
from torch.utils.data import default_collate

def collate(items):
    return default_collate(items)

def step(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)
"""


def test_every_flag_parses_into_the_run_config(ws, tmp_path, monkeypatch):
    # the named collate and step are imported and tried on a batch before a run is made
    (tmp_path / "mymod.py").write_text(MYMOD)
    monkeypatch.chdir(tmp_path)
    cfg = parse(ws, *FLAGS)
    assert {k: getattr(cfg, k) for k in EXPECTED} == EXPECTED
    # and every setting flag is covered here
    assert {f for f in FLAG_SETTINGS if f not in ("epochs", "init_from")} <= {
        a.lstrip("-").replace("-", "_") for a in FLAGS if a.startswith("--")} | {"grad_clip", "keep", "betas", "label_smoothing"}
    cfg = parse(ws, "--model", "demo", "--optimizer", "adam", "--betas", "0.8,0.95", "--grad-clip", "2",
                "--loss", "cross_entropy", "--label-smoothing", "0.1")
    assert (cfg.betas, cfg.grad_clip, cfg.label_smoothing) == ([0.8, 0.95], 2.0, 0.1)


BAD_FLAGS = [
    (["--momentum", "abc"], "--momentum", "momentum"),
    (["--momentum", "1.5"], "--momentum", "momentum"),
    (["--weight-decay", "-1"], "--weight-decay", "weight_decay"),
    (["--optimizer", "adam", "--betas", "0.9"], "--betas", "betas"),
    (["--optimizer", "adam", "--betas", "0.9,1.5"], "--betas", "betas"),
    (["--optimizer", "adam", "--betas", "a,b"], "--betas", "betas"),
    (["--schedule", "linear"], "--schedule", "schedule"),
    (["--warmup-steps", "-3"], "--warmup-steps", "warmup_steps"),
    (["--loss", "hinge"], "--loss", "loss"),
    (["--label-smoothing", "2"], "--label-smoothing", "label_smoothing"),
    (["--clip-grad-norm", "0"], "--clip-grad-norm", "grad_clip"),
    (["--accumulate", "0"], "--accumulate", "accumulate"),
    (["--precision", "fp8"], "--precision", "precision"),
    (["--device", "tpu"], "--device", "device"),
    (["--val-fraction", "1"], "--val-fraction", "val_fraction"),
    (["--val-every", "x"], "--val-every", "val_every"),
    (["--early-stop-patience", "0"], "--early-stop-patience", "early_stop_patience"),
    (["--num-workers", "-1"], "--num-workers", "num_workers"),
    (["--collate", "nocolon"], "--collate", "collate"),
    (["--step", "nocolon"], "--step", "step"),
    (["--max-steps", "0"], "--max-steps", "max_steps"),
    (["--checkpoint-every", "0"], "--checkpoint-every", "checkpoint_every"),
    (["--keep", "0"], "--keep", "keep_checkpoints"),
]


@pytest.mark.parametrize("extra, flag, field", BAD_FLAGS, ids=[b[1] + "=" + b[0][-1] for b in BAD_FLAGS])
def test_a_bad_flag_exits_2_with_one_line_naming_it(ws, capsys, extra, flag, field):
    import json

    capsys.readouterr()
    code = main(["--workspace", str(ws.root), "train", "--model", "demo", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and flag in err, err
    code = main(["--workspace", str(ws.root), "train", "--model", "demo", *extra, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and doc["error"]["field"] == field
    assert not list(ws.runs_dir.iterdir()) if ws.runs_dir.exists() else True


# -- --config ------------------------------------------------------------------------------------
def test_config_file_sets_and_flags_override(ws, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "demo"\nmax_steps = 40\nwarmup_steps = 4\nschedule = "cosine"\nlr = 0.05\n'
                    'optimizer = "adamw"\nbetas = [0.9, 0.95]\nkeep = 2\nclip_grad_norm = 1\nnesterov = false\n')
    cfg = parse(ws, "--config", str(path))  # no --model needed
    assert (cfg.model, cfg.max_steps, cfg.warmup_steps, cfg.schedule, cfg.lr, cfg.optimizer, cfg.betas,
            cfg.keep_checkpoints, cfg.grad_clip) == ("demo", 40, 4, "cosine", 0.05, "adamw", [0.9, 0.95], 2, 1.0)
    cfg = parse(ws, "--config", str(path), "--lr", "0.1", "--schedule", "step", "--epochs", "3")
    assert (cfg.lr, cfg.schedule, cfg.epochs, cfg.max_steps, cfg.warmup_steps) == (0.1, "step", 3, None, 4)


def test_a_saved_config_loads_back_the_same(tmp_path):
    cfg = RunConfig(model="demo", data="synthetic:regression", max_steps=40, optimizer="adam", betas=[0.8, 0.9],
                    schedule="onecycle", warmup_steps=3, name='say "hi"', keep_checkpoints=4, grad_clip=0.5,
                    deterministic=True).validate()
    cfg.checkpoint_every_epoch = cfg.checkpoint_on_stop = False
    path = config_file.save(cfg, tmp_path / "saved.toml")
    back = config_file.load(path).apply(RunConfig())
    for field in ("model", "data", "max_steps", "optimizer", "betas", "schedule", "warmup_steps", "name",
                  "keep_checkpoints", "grad_clip", "deterministic", "checkpoint_every_epoch", "checkpoint_on_stop"):
        assert getattr(back, field) == getattr(cfg, field), field


CONFIG_ERRORS = [
    ('model = "demo"\nwarmup = 3\n', "warmup", "config"),  # unknown key
    ('model = "demo"\nmax-steps = 3\n', "max_steps", "config"),  # a flag's spelling: told the key's
    ('model = "demo"\nepochs = "ten"\n', "epochs", "epochs"),  # wrong type
    ('model = "demo"\nlr = true\n', "lr", "lr"),
    ('model = "demo"\nbetas = 0.9\n', "betas", "betas"),
    ('model = "demo"\nmomentum = 3.0\n', "momentum", "momentum"),  # bad value, found by validate
    ('model = "demo"\nschedule = "linear"\n', "schedule", "schedule"),
    ('model = "nosuch"\n', "model", "model"),  # found by prepare
    ('model = "demo"\nlr = \n', "TOML", "config"),  # not TOML
    ('model = "demo"\nclip_grad_norm = 1\ngrad_clip = 2\n', "grad_clip", "grad_clip"),  # said twice
]


@pytest.mark.parametrize("text, word, field", CONFIG_ERRORS, ids=[c[1] + "-" + c[2] for c in CONFIG_ERRORS])
def test_config_file_errors_name_the_key_and_the_file(ws, tmp_path, capsys, text, word, field):
    import json

    path = tmp_path / "bad.toml"
    path.write_text(text)
    capsys.readouterr()
    code = main(["--workspace", str(ws.root), "train", "--config", str(path), "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert code == 2 and doc["error"]["field"] == field, doc
    assert str(path) in doc["error"]["message"] and word in doc["error"]["message"], doc
    assert captured.err.count("\n") == 1


def test_config_file_missing_and_no_model(ws, tmp_path, capsys):
    code = main(["--workspace", str(ws.root), "train", "--config", str(tmp_path / "none.toml")])
    err = capsys.readouterr().err
    assert code == 2 and "none.toml" in err
    (tmp_path / "nomodel.toml").write_text("epochs = 2\n")
    code = main(["--workspace", str(ws.root), "train", "--config", str(tmp_path / "nomodel.toml")])
    assert code == 2 and "--model is required" in capsys.readouterr().err
    # a flag's bad value is blamed on the flag even with a file
    (tmp_path / "ok.toml").write_text('model = "demo"\nmomentum = 0.5\n')
    code = main(["--workspace", str(ws.root), "train", "--config", str(tmp_path / "ok.toml"), "--momentum", "7"])
    err = capsys.readouterr().err
    assert code == 2 and "--momentum" in err and "ok.toml" not in err


# -- resume ----------------------------------------------------------------------------------------
def test_every_new_setting_flag_is_refused_by_a_resume():
    for dest in FLAG_SETTINGS:
        if dest not in ("epochs", "max_steps", "lr"):
            assert dest in RUN_FLAGS, dest
    assert "config" in RUN_FLAGS


@pytest.mark.parametrize("extra, word", [(["--schedule", "cosine"], "--schedule"), (["--momentum", "0.9"], "--momentum"),
                                         (["--nesterov"], "--nesterov"), (["--clip-grad-norm", "1"], "--clip-grad-norm"),
                                         (["--precision", "bf16"], "--precision"), (["--config", "x.toml"], "--config")])
def test_a_resume_refuses_a_new_setting(ws, capsys, extra, word):
    from torchdeck.runs.store import RunStore

    RunStore(ws).create(RunConfig(model="demo", epochs=1, name="r"))
    capsys.readouterr()
    code = main(["--workspace", str(ws.root), "train", "--resume", "r", "--epochs", "3", *extra])
    err = capsys.readouterr().err
    assert code == 2 and word in err and "cannot change when resuming" in err, err
