"""Checkpoint formats detected from content (issue 7 items 1-2): each made with torch or
safetensors itself, shaped like the files Lightning, timm, Hugging Face and torch.distributed
write; inspected without --trust, with metadata, optimizer summary and per-tensor stats."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchdeck.checkpoints import formats
from torchdeck.errors import Corrupt, UnsafeFile
from torchdeck.tui.cli import main as cli_main
from torchdeck.workspace import Workspace


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"layer.weight": torch.randn(4, 3), "layer.bias": torch.zeros(4), "head.weight": torch.randn(2, 4)}


def _optimizer_state() -> dict:
    model = torch.nn.Linear(3, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


class HParams:  # stands for a user's own config class: never importable by the reader
    def __init__(self):
        self.lr = 0.1
        self.layers = [64, 32]


class DictConfigLike(dict):  # like omegaconf containers / Lightning's AttributeDict
    pass


def _run(ws: Path, *args: str, capsys) -> tuple[int, str, str]:
    code = cli_main(["--workspace", str(ws), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def ws(tmp_path) -> Path:
    return Workspace.open(tmp_path / "ws").root


def test_lightning_ckpt_with_unknown_hparams_inspects_without_trust(tmp_path):
    p = tmp_path / "epoch=3-step=120.ckpt"  # the suffix plays no part
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": _state(),
                "optimizer_states": [_optimizer_state()], "lr_schedulers": [{"last_epoch": 3}],
                "hyper_parameters": DictConfigLike(lr=0.1, cfg=HParams()), "callbacks": {"ModelCheckpoint": {}},
                "loops": {"fit_loop": {}}}, p)
    info = formats.inspect(p)
    assert info.format == "lightning"
    assert (info.epoch, info.step) == (3, 120)
    doc = info.to_json()
    assert doc["epoch"] == 3 and doc["step"] == 120
    md = doc["metadata"]
    assert md["pytorch-lightning_version"] == "2.4.0"
    hp = md["hyper_parameters"]
    assert hp["__class__"].endswith("DictConfigLike") and hp["value"]["lr"] == 0.1
    assert hp["value"]["cfg"]["__class__"].endswith("HParams") and hp["value"]["cfg"]["value"]["layers"] == [64, 32]
    opt = md["optimizer"][0]
    assert opt["type"] == "AdamW" and opt["state_tensors"] == 6 and opt["state_bytes"] > 0
    assert {t["name"] for t in doc["tensors"]} == set(_state())
    assert doc["num_params"] == 12 + 4 + 8 and doc["num_bytes"] == 24 * 4
    json.dumps(doc)  # every value JSON-able
    assert set(formats.load_weights(p)) == set(_state())


def test_timm_checkpoint_with_namespace_args(tmp_path):
    p = tmp_path / "model_best.pth.tar"
    torch.save({"arch": "resnet18", "epoch": 7, "state_dict": _state(), "state_dict_ema": _state(),
                "metric": 71.5, "args": argparse.Namespace(lr=0.05, model="resnet18"),
                "optimizer": _optimizer_state()}, p)
    info = formats.inspect(p)
    assert info.format == "timm" and info.epoch == 7 and info.metrics == {"metric": 71.5}
    md = info.to_json()["metadata"]
    assert md["arch"] == "resnet18" and md["args"] == {"lr": 0.05, "model": "resnet18"}
    assert md["state_dict_ema"] == {"tensors": 3, "params": 24, "same_shapes_as_state_dict": True}


def test_training_dict_plain_state_dict_and_legacy_format(tmp_path):
    td = tmp_path / "train.pt"
    torch.save({"epoch": 2, "model_state_dict": _state(), "optimizer_state_dict": _optimizer_state(),
                "loss": 0.25}, td)
    info = formats.inspect(td)
    assert info.format == "torch-training-dict" and info.epoch == 2
    assert info.to_json()["metadata"]["loss"] == 0.25
    plain = tmp_path / "weights.bin"
    torch.save(_state(), plain)
    assert formats.inspect(plain).format == "torch-state-dict"
    legacy = tmp_path / "legacy.pth"
    torch.save(_state(), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80"
    got = formats.load_weights(legacy)
    assert all(torch.equal(got[k], v) for k, v in _state().items())


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("zipped", [True, False])
def test_every_pickle_protocol_loads(tmp_path, protocol, zipped, recwarn):
    p = tmp_path / "w.pt"
    torch.save(_state(), p, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    got = formats.load_weights(p)
    assert all(torch.equal(got[k], v) for k, v in _state().items())
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_content_not_extension_decides(tmp_path):
    st = tmp_path / "actually-safetensors.pt"
    save_file(_state(), str(st))
    assert formats.inspect(st).format == "safetensors"
    pt = tmp_path / "actually-torch.safetensors"
    torch.save(_state(), pt)
    assert formats.inspect(pt).format == "torch-state-dict"


def test_safetensors_header_only_with_metadata(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file(_state(), str(p), metadata={"format": "pt", "step": "9"})
    info = formats.inspect(p)
    assert info.meta == {"format": "pt", "step": "9"}
    assert {t.name: t.nbytes for t in info.tensors} == {k: v.numel() * 4 for k, v in _state().items()}


def test_hf_model_folders_single_sharded_and_bin(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    save_file(_state(), str(single / "model.safetensors"))
    (single / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 4}))
    info = formats.inspect(single)
    assert info.format == "hf-model" and info.to_json()["metadata"]["config"]["model_type"] == "bert"
    assert len(info.tensors) == 3

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    s = _state()
    save_file({"layer.weight": s["layer.weight"], "layer.bias": s["layer.bias"]},
              str(sharded / "model-00001-of-00002.safetensors"))
    save_file({"head.weight": s["head.weight"]}, str(sharded / "model-00002-of-00002.safetensors"))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 96}, "weight_map": {
        "layer.weight": "model-00001-of-00002.safetensors", "layer.bias": "model-00001-of-00002.safetensors",
        "head.weight": "model-00002-of-00002.safetensors"}}))
    info = formats.inspect(sharded)
    assert {t.name for t in info.tensors} == set(s) and len(info.meta["shards"]) == 2
    assert set(formats.load_weights(sharded)) == set(s)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(Corrupt, match="shard model-00002-of-00002.safetensors .* is missing"):
        formats.inspect(sharded)

    binf = tmp_path / "bin"
    binf.mkdir()
    torch.save(_state(), binf / "pytorch_model.bin")
    assert {t.name for t in formats.inspect(binf).tensors} == set(s)


def test_hf_trainer_checkpoint_folder(tmp_path):
    ck = tmp_path / "checkpoint-500"
    ck.mkdir()
    save_file(_state(), str(ck / "model.safetensors"))
    (ck / "trainer_state.json").write_text(json.dumps({
        "global_step": 500, "epoch": 1.5, "best_metric": 0.42,
        "log_history": [{"step": 100, "loss": 2.0}, {"step": 200, "loss": 1.5}, {"step": 200, "eval_loss": 1.7}]}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"x": torch.zeros(1)}, ck / name)

    class Evil:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w')",))

    (ck / "training_args.bin").write_bytes(pickle.dumps(Evil()))  # listed, never unpickled
    info = formats.inspect(ck)
    assert info.format == "hf-trainer-checkpoint" and info.step == 500 and info.epoch == 1.5
    md = info.to_json()["metadata"]
    assert md["loss_curve"] == [[100, 2.0], [200, 1.5]] and md["best_metric"] == 0.42
    assert md["files"] == ["optimizer.pt", "rng_state.pth", "scheduler.pt", "training_args.bin"]
    assert not Path("PWNED").exists()


def test_distributed_checkpoint_folder(tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(), checkpoint_id=str(tmp_path / "dcp"))
    info = formats.inspect(tmp_path / "dcp")
    assert info.format == "torch-dcp"
    assert {t.name: t.shape for t in info.tensors} == {k: list(v.shape) for k, v in _state().items()}
    with pytest.raises(UnsafeFile, match="--trust"):
        formats.load_weights(tmp_path / "dcp")
    got = formats.load_weights(tmp_path / "dcp", trust=True)
    assert all(torch.equal(got[k], v) for k, v in _state().items())


def test_commands_that_name_trust_take_it(tmp_path, ws, capsys):
    """verify, diff and convert of a DCP folder say "--trust" is needed, and take it."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(), checkpoint_id=str(tmp_path / "dcp"))
    code, out, _ = _run(ws, "ckpt", "verify", str(tmp_path / "dcp"), capsys=capsys)
    assert code == 1 and "--trust" in out
    code, out, _ = _run(ws, "ckpt", "verify", str(tmp_path / "dcp"), "--trust", capsys=capsys)
    assert code == 0 and out.rstrip().endswith("ok")
    code, out, _ = _run(ws, "ckpt", "diff", str(tmp_path / "dcp"), str(tmp_path / "dcp"), "--trust", "--json",
                        capsys=capsys)
    assert code == 0 and json.loads(out)["identical"]
    code, out, _ = _run(ws, "ckpt", "convert", str(tmp_path / "dcp"), "--to", "safetensors", "--out",
                        str(tmp_path / "w.safetensors"), "--trust", "--json", capsys=capsys)
    assert code == 0 and (tmp_path / "w.safetensors").exists()


def test_cli_inspect_json_metadata_and_stats(tmp_path, ws, capsys):
    p = tmp_path / "last.ckpt"
    s = _state()
    s["layer.bias"][0] = float("nan")
    s["layer.bias"][1] = float("inf")
    torch.save({"epoch": 4, "global_step": 40, "pytorch-lightning_version": "2.1.0", "state_dict": s,
                "hyper_parameters": {"lr": 0.1}}, p)
    code, out, err = _run(ws, "ckpt", "inspect", str(p), "--json", "--stats", capsys=capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["epoch"] == 4 and doc["step"] == 40 and doc["metadata"]["hyper_parameters"] == {"lr": 0.1}
    bias = next(t for t in doc["tensors"] if t["name"] == "layer.bias")
    assert bias["stats"]["nan"] == 1 and bias["stats"]["inf"] == 1 and bias["stats"]["max"] == 0.0
    w = next(t for t in doc["tensors"] if t["name"] == "layer.weight")
    assert w["stats"]["min"] == pytest.approx(float(s["layer.weight"].min()))
    assert w["stats"]["std"] == pytest.approx(float(s["layer.weight"].double().std()))
    code, out, err = _run(ws, "ckpt", "inspect", str(p), "--stats", capsys=capsys)
    assert code == 0 and "NAN/INF" in out and "1/1" in out and "epoch 4" in out
