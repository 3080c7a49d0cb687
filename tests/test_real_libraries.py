"""Checkpoints written by the real libraries, not imitations (issue 7): Lightning's Trainer and
ModelCheckpoint, transformers' save_pretrained and Trainer, timm's CheckpointSaver and
torch.distributed.checkpoint write them here, and what torchdeck reports (without --trust) is
checked against what the library itself reports.

Lightning and transformers come from the `real` test extra; timm cannot live beside this torch
(PyPI's torchvision does not import with it), so `make real-timm` writes its files from a venv of
its own (tests/real/make_timm.py) together with timm's own account of them. Without them these
tests skip, naming what to install; under `make test` (TORCHDECK_REAL_REQUIRED=1) they fail.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torchdeck.checkpoints import formats
from torchdeck.checkpoints.formats import torch_file
from torchdeck.errors import Corrupt, UnsafeFile
from torchdeck.models import specs
from torchdeck.tui.cli import main as cli_main
from torchdeck.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
TIMM_OUT = REPO / "tests" / "real" / "generated" / "timm"
REQUIRED = os.environ.get("TORCHDECK_REAL_REQUIRED") == "1"
EXTRA = "pip install -c .ci/constraints.txt -e '.[test,real]' (make test does)"


def _unavailable(what: str, how: str):
    if REQUIRED:
        pytest.fail(f"{what} is missing: {how}. TORCHDECK_REAL_REQUIRED=1 asks for every real-library test")
    pytest.skip(f"{what} is missing: {how}")


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        _unavailable(module, EXTRA)


def _shapes(sd) -> dict[str, tuple[list[int], str]]:
    return {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}


def _info_shapes(info) -> dict[str, tuple[list[int], str]]:
    return {t.name: (list(t.shape), t.dtype) for t in info.tensors}


def _cli(ws: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["--workspace", str(ws), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Path:
    return Workspace.open(tmp_path_factory.mktemp("ws") / "ws").root


class _Payload:
    """Unpickling this would create the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# -- Lightning ----------------------------------------------------------------------------------
MLP = {"in_features": 4, "hidden": 8, "num_classes": 2}


@pytest.fixture(scope="session")
def lightning_run(tmp_path_factory):
    """Two epochs of a real Trainer.fit; ModelCheckpoint keeps every epoch and last.ckpt. The
    hyper-parameters hold what real projects put there: omegaconf containers (with an
    interpolation), an argparse Namespace, Lightning's AttributeDict."""
    L = _need("lightning")
    omegaconf = _need("omegaconf")
    from lightning.fabric.utilities.data import AttributeDict
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class Net(L.LightningModule):
        def __init__(self, cfg, layers, args, extra, lr=0.01):
            super().__init__()
            self.save_hyperparameters()
            # torchdeck's builtin:mlp under `model.`: the prefix situation load-check offers to fix
            self.model = specs.build(specs.resolve("builtin:mlp", None, MLP))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

    class Saves(Callback):  # what the trainer says at the moment of each save
        def __init__(self):
            self.seen: list[tuple[int, int]] = []

        def on_save_checkpoint(self, trainer, module, checkpoint):
            self.seen.append((trainer.current_epoch, trainer.global_step))

    root = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    cfg = omegaconf.OmegaConf.create({"data": {"path": "/data/train", "sizes": [1, 2]}, "lr": 0.01,
                                      "sched": {"base_lr": "${lr}"}, "missing": "???"})
    module = Net(cfg, omegaconf.OmegaConf.create([16, 8]), argparse.Namespace(seed=1, tags=["a", "b"]),
                 AttributeDict(note="attr", depth=2))
    saves = Saves()
    ckpt = ModelCheckpoint(dirpath=root / "ckpts", save_top_k=-1, every_n_epochs=1, save_last=True)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=True, callbacks=[ckpt, saves],
                        default_root_dir=root)
    ds = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    trainer.fit(module, torch.utils.data.DataLoader(ds, batch_size=4))
    return {"trainer": trainer, "module": module, "saves": saves.seen, "dir": root / "ckpts",
            "version": L.__version__, "omegaconf": omegaconf}


def test_lightning_ckpt_epoch_step_tensors_as_lightning_says(lightning_run):
    run = lightning_run
    files = sorted(run["dir"].glob("*.ckpt"))
    assert [f.name for f in files] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    want = _shapes(run["module"].state_dict())
    reported = set()
    for f in files:
        full = torch.load(f, map_location="cpu", weights_only=False)  # our own file: the library's view
        info = formats.inspect(f)  # no trust
        assert info.format == "lightning"
        assert (info.epoch, info.step) == (full["epoch"], full["global_step"]), f.name
        reported.add((info.epoch, info.step))
        assert _info_shapes(info) == want
        md = info.to_json()["metadata"]
        assert md["pytorch-lightning_version"] == full["pytorch-lightning_version"] == run["version"]
        opt = md["optimizer"][0]
        state = full["optimizer_states"][0]["state"]
        assert opt["type"] == "AdamW" and opt["params"] == len(want)
        assert opt["state_tensors"] == sum(len(s) for s in state.values())
        assert opt["state_bytes"] == sum(t.numel() * t.element_size() for s in state.values() for t in s.values())
        assert md["lr_schedulers"][0]["last_epoch"] == full["lr_schedulers"][0]["last_epoch"]
        json.dumps(md)
    assert reported == set(run["saves"])  # what the trainer said at each save
    last = formats.inspect(run["dir"] / "last.ckpt")
    assert last.step == run["trainer"].global_step == 8
    assert last.epoch == run["trainer"].current_epoch - 1  # saved at the end of the last epoch, 0-based


def test_lightning_hyper_parameters_readable_without_trust(lightning_run):
    run = lightning_run
    f = run["dir"] / "last.ckpt"
    full = torch.load(f, map_location="cpu", weights_only=False)["hyper_parameters"]
    hp = formats.inspect(f).to_json()["metadata"]["hyper_parameters"]
    to_container = run["omegaconf"].OmegaConf.to_container
    # omegaconf containers as the values the user wrote, interpolations unresolved, nodes unwrapped
    assert hp["cfg"] == {"__class__": "omegaconf.dictconfig.DictConfig", "value": to_container(full["cfg"])}
    assert hp["cfg"]["value"]["sched"] == {"base_lr": "${lr}"} and hp["cfg"]["value"]["missing"] == "???"
    assert hp["layers"] == {"__class__": "omegaconf.listconfig.ListConfig", "value": [16, 8]}
    assert hp["args"] == vars(full["args"]) == {"seed": 1, "tags": ["a", "b"]}
    assert hp["extra"] == dict(full["extra"]) and hp["lr"] == 0.01
    assert len(json.dumps(hp)) < 1000  # no omegaconf metadata, no parent links rendered over and over


def test_lightning_weights_load_check_and_convert(lightning_run, ws, tmp_path, capsys):
    run = lightning_run
    f = run["dir"] / "last.ckpt"
    sd = run["module"].state_dict()
    got = formats.load_weights(f)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)

    code, out, err = _cli(ws, capsys, "ckpt", "load-check", str(f), "--model", "builtin:mlp", "--args",
                          json.dumps(MLP), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["suggested_prefix_fix"] == {"strip": "model."}, err
    assert doc["unexpected"] == sorted(sd) and doc["mismatched"] == []

    out_file = tmp_path / "last.safetensors"
    code, out, err = _cli(ws, capsys, "ckpt", "convert", str(f), "--to", "safetensors", "--out", str(out_file),
                          "--json")
    assert code == 0, err
    with safe_open(str(out_file), "pt") as st:
        assert set(st.keys()) == set(sd)
        assert all(torch.equal(st.get_tensor(k), sd[k]) for k in sd)
    code, out, _ = _cli(ws, capsys, "ckpt", "load-check", str(out_file), "--model", "builtin:mlp", "--args",
                        json.dumps(MLP), "--json")
    assert code == 1 and json.loads(out)["suggested_prefix_fix"] == {"strip": "model."}


class _Token:
    """A persistent id or a tensor's rebuild call read from a pickle, written back as it was."""

    def __init__(self, pid=None, rebuild=None):
        self.pid, self.rebuild = pid, rebuild

    def __reduce__(self):
        return self.rebuild


def _rewrite_pickle(src: Path, dst: Path, change) -> None:
    """Copy a torch zip file with its data.pkl unpickled (tensors and storage references kept as
    tokens, never rebuilt), changed, and pickled again: every other record byte for byte."""
    class Read(pickle.Unpickler):
        def persistent_load(self, pid):
            return _Token(pid=pid)

        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda *args: _Token(rebuild=(torch._utils._rebuild_tensor_v2, args))
            return super().find_class(module, name)

    class Write(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, _Token) and obj.pid is not None else None

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                obj = Read(io.BytesIO(data)).load()
                change(obj)
                buf = io.BytesIO()
                Write(buf, protocol=2).dump(obj)
                data = buf.getvalue()
            zout.writestr(item, data)


def test_reduce_payload_inside_a_real_lightning_ckpt_refused(lightning_run, ws, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    _rewrite_pickle(lightning_run["dir"] / "last.ckpt", evil,
                    lambda d: d["hyper_parameters"].__setitem__("cfg", _Payload(marker)))
    intact = tmp_path / "intact.ckpt"
    _rewrite_pickle(lightning_run["dir"] / "last.ckpt", intact, lambda d: None)
    assert formats.inspect(intact).step == 8  # the rewriting alone breaks nothing
    for call in (formats.inspect, formats.load_weights):
        with pytest.raises(UnsafeFile, match="posix.system") as e:
            call(evil)
        assert e.value.globals == ["posix.system"]
    code, out, err = _cli(ws, capsys, "ckpt", "inspect", str(evil), "--json")
    assert code != 0 and "posix.system" in json.loads(out)["error"]["message"]
    assert not marker.exists()


# -- transformers -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hf(tmp_path_factory):
    """A tiny random GPT-2 (tied lm_head) saved by save_pretrained single and sharded, a
    pytorch_model.bin folder transformers itself loads, and a real Trainer run (4 steps, a
    checkpoint every 2)."""
    transformers = _need("transformers")
    _need("accelerate")
    root = tmp_path_factory.mktemp("hf")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    tied = set(model.state_dict()) - set(_saved_tensors(root / "single"))  # tied copies are saved once
    binf = root / "bin"
    if int(transformers.__version__.split(".")[0]) < 5:
        model.save_pretrained(binf, safe_serialization=False)
    else:
        # transformers 5 writes only safetensors (safe_serialization is gone) yet still loads the
        # pytorch_model.bin folders earlier versions wrote: one is written as they did (tied
        # copies left out), and the library itself loads it.
        model.config.save_pretrained(binf)
        torch.save({k: v for k, v in model.state_dict().items() if k not in tied}, binf / "pytorch_model.bin")
    assert (binf / "pytorch_model.bin").exists() and not list(binf.glob("*.safetensors"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(binf)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())

    ids = torch.randint(0, cfg.vocab_size, (8, 16))
    args = transformers.TrainingArguments(
        output_dir=str(root / "trainer"), max_steps=4, save_steps=2, logging_steps=1, report_to=[], use_cpu=True,
        per_device_train_batch_size=2, disable_tqdm=True, save_strategy="steps", learning_rate=1e-3)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(cfg), args=args,
                                   train_dataset=[{"input_ids": x, "labels": x} for x in ids])
    trainer.train()
    return {"root": root, "model": model, "tied": tied, "trainer": trainer, "config": cfg.to_dict()}


def _saved_tensors(folder: Path) -> dict[str, tuple[list[int], str]]:
    """What the safetensors files transformers wrote hold, read by safetensors itself."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            out.update(_shapes({k: st.get_tensor(k) for k in st.keys()}))
    return out


def test_hf_model_folders_single_sharded_bin(hf):
    root, model = hf["root"], hf["model"]
    want = {k: v for k, v in _shapes(model.state_dict()).items() if k not in hf["tied"]}
    assert hf["tied"] == {"lm_head.weight"}
    for name in ("single", "sharded", "bin"):
        info = formats.inspect(root / name)
        assert info.format == "hf-model", name
        assert _info_shapes(info) == want, name
        cfg = info.to_json()["metadata"]["config"]
        assert cfg["model_type"] == "gpt2" and cfg["n_embd"] == hf["config"]["n_embd"]
        got = formats.load_weights(root / name)
        assert all(torch.equal(got[k], model.state_dict()[k]) for k in want), name
    assert _saved_tensors(root / "single") == _saved_tensors(root / "sharded") == want
    index = json.loads((root / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and formats.inspect(root / "sharded").meta["shards"] == shards


def test_hf_sharded_missing_and_truncated_shard(hf, ws, tmp_path, capsys):
    import shutil

    folder = tmp_path / "sharded"
    shutil.copytree(hf["root"] / "sharded", folder)
    code, out, err = _cli(ws, capsys, "ckpt", "verify", str(folder), "--json")
    assert code == 0 and json.loads(out)["ok"], out + err
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    code, out, err = _cli(ws, capsys, "ckpt", "verify", str(folder), "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and shard.name in doc["problems"][0]
    shard.unlink()
    with pytest.raises(Corrupt, match=f"shard {shard.name} named in model.safetensors.index.json is missing"):
        formats.inspect(folder)


def test_hf_trainer_checkpoints_as_the_trainer_says(hf, ws, capsys, monkeypatch):
    trainer = hf["trainer"]
    out_dir = hf["root"] / "trainer"
    assert sorted(p.name for p in out_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    # training_args.bin is listed, never unpickled: any unpickling of it would come through here
    opened = []
    real_load = torch_file.read
    monkeypatch.setattr(torch_file, "read", lambda p, **kw: (opened.append(Path(p).name), real_load(p, **kw))[1])
    real_torch_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: (opened.append(Path(str(f)).name),
                                                            real_torch_load(f, *a, **kw))[1])
    want = {k: v for k, v in _shapes(trainer.model.state_dict()).items() if k not in hf["tied"]}
    for step in (2, 4):
        ck = out_dir / f"checkpoint-{step}"
        state = json.loads((ck / "trainer_state.json").read_text())
        info = formats.inspect(ck)
        assert info.format == "hf-trainer-checkpoint"
        assert info.step == state["global_step"] == step
        assert info.epoch == state["epoch"]
        assert _info_shapes(info) == want
        md = info.to_json()["metadata"]
        assert md["loss_curve"] == [[s, losses[s]] for s in sorted(losses) if s <= step]
        assert md["files"] == ["optimizer.pt", "rng_state.pth", "scheduler.pt", "training_args.bin"]
        assert md["config"]["model_type"] == "gpt2" and md["max_steps"] == 4
    final = formats.inspect(out_dir / "checkpoint-4")
    assert (final.step, final.epoch) == (trainer.state.global_step, trainer.state.epoch)
    code, out, err = _cli(ws, capsys, "ckpt", "verify", str(out_dir / "checkpoint-4"), "--json")
    assert code == 0 and json.loads(out)["tensors_checked"] == len(want), out + err
    assert "training_args.bin" not in opened
    formats.inspect(hf["root"] / "bin")
    assert "pytorch_model.bin" in opened  # the spy sees what is unpickled


# -- timm ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def timm_files():
    report = TIMM_OUT / "timm.json"
    if not report.exists():
        _unavailable(f"{report.relative_to(REPO)}", "run `make real-timm` (make test does)")
    return json.loads(report.read_text())


def test_timm_checkpoints_as_timm_says(timm_files):
    assert set(timm_files["files"]) == {"checkpoint-1.pth.tar", "checkpoint-2.pth.tar", "last.pth.tar",
                                        "model_best.pth.tar"}
    ema_params = sum(_numel(s) for s, _ in timm_files["ema_state_dict"].values())
    for name, said in timm_files["files"].items():
        f = TIMM_OUT / name
        info = formats.inspect(f)  # no trust
        assert info.format == "timm", name
        assert info.epoch == said["epoch"] and said["resume_epoch"] == said["epoch"] + 1
        assert info.metrics == {"metric": said["metric"]}
        assert {k: [s, d] for k, (s, d) in _info_shapes(info).items()} == said["state_dict"]
        md = info.to_json()["metadata"]
        assert md["arch"] == said["arch"] == timm_files["arch"] and md["version"] == said["version"]
        assert md["args"] == said["args"]  # an argparse.Namespace, read without --trust
        assert md["state_dict_ema"] == {"tensors": len(said["state_dict_ema"]), "params": ema_params,
                                        "same_shapes_as_state_dict": said["state_dict_ema"] == said["state_dict"]}
        assert md["optimizer"]["type"] == "SGD" and md["optimizer"]["state_tensors"] == said["optimizer_state_tensors"]
    best = formats.inspect(TIMM_OUT / "model_best.pth.tar")
    assert (best.epoch, best.metrics["metric"]) == (timm_files["best"]["epoch"], timm_files["best"]["metric"])


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- torch.distributed.checkpoint ---------------------------------------------------------------
def test_dcp_model_and_optimizer_state(tmp_path):
    """A training state as DCP users save it (get_state_dict: model and optimizer, flattened
    names): test_formats covers a plain state dict; this adds optimizer state and non-tensors."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd, "step": 7}, checkpoint_id=str(tmp_path / "dcp"))
    md = dcp.FileSystemReader(str(tmp_path / "dcp")).read_metadata()  # torch's own reading
    want = {k: list(v.size) for k, v in md.state_dict_metadata.items() if hasattr(v, "size")}
    info = formats.inspect(tmp_path / "dcp")
    assert info.format == "torch-dcp" and {t.name: t.shape for t in info.tensors} == want
    assert {f"model.{k}" for k in model.state_dict()} <= set(want)
    assert any(k.startswith("optim.state.") for k in want)
    assert "step" in info.meta["objects"]
