"""Checkpoint files made to break the readers (issue 7, "found by trying to break it"): each is
told in one clear line, exit 1, as corrupt or refused (naming the global) -- never an internal
error, a traceback, a torch warning, a hang, or code from the file running."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, cli_env
from safetensors.torch import save_file
from torchdeck.checkpoints import formats
from torchdeck.errors import Corrupt, OperationFailed, TorchdeckError, UnsafeFile
from torchdeck.tui.cli import main as cli_main
from torchdeck.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Path:
    return Workspace.open(tmp_path / "ws").root


def _state():
    return {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}


def _inspect_cli(ws: Path, path: Path, capsys) -> tuple[int, str]:
    code = cli_main(["--workspace", str(ws), "ckpt", "inspect", str(path)])
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert "Traceback" not in out.err and "internal error" not in out.err.lower()
    return code, lines[0]


def _safetensors_bytes(header: object, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


# -- safetensors ------------------------------------------------------------------------------------
HOSTILE_SAFETENSORS = {
    "offsets-1e18-params": _safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 4 * 10**18]}}, b"\0" * 16),
    "offsets-past-end": _safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
    "header-length-past-file": struct.pack("<Q", 10**6) + b'{"w": {}}',
    "overlapping": _safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                       "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
    "reversed-offsets": _safetensors_bytes({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, b"\0" * 8),
    "shape-abc": _safetensors_bytes({"w": {"dtype": "F32", "shape": "abc", "data_offsets": [0, 4]}}, b"\0" * 4),
    "shape-nested": _safetensors_bytes({"w": {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]}}, b"\0" * 4),
    "shape-negative": _safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "dtype-unknown": _safetensors_bytes({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "nested-100000": _safetensors_bytes(None, raw_header=b"[" * 100_000 + b"]" * 100_000),
    "nested-object-100000": _safetensors_bytes(None, raw_header=b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "not-json": _safetensors_bytes(None, raw_header=b"{not json"),
    "header-a-list": _safetensors_bytes([1, 2]),
    "gap": _safetensors_bytes({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SAFETENSORS))
def test_hostile_safetensors_are_corrupt(tmp_path, case):
    p = tmp_path / f"{case}.safetensors"
    p.write_bytes(HOSTILE_SAFETENSORS[case])
    with pytest.raises(Corrupt) as e:
        formats.inspect(p)
    assert "\n" not in str(e.value) and "safetensors" in str(e.value)
    with pytest.raises(Corrupt):
        formats.load_weights(p)


def test_truncated_safetensors_at_every_offset(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(_state(), str(good))
    data = good.read_bytes()
    assert len(formats.inspect(good).tensors) == 2
    p = tmp_path / "cut.safetensors"
    for n in range(len(data)):  # every cut, the half included
        p.write_bytes(data[:n])
        with pytest.raises(Corrupt):
            formats.inspect(p)


def test_cli_half_safetensors_and_huge_offsets_exit_1(tmp_path, ws, capsys):
    good = tmp_path / "m.safetensors"
    save_file(_state(), str(good))
    half = tmp_path / "half.safetensors"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, line = _inspect_cli(ws, half, capsys)
    assert code == 1 and "past the end" in line
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(HOSTILE_SAFETENSORS["offsets-1e18-params"])
    code, line = _inspect_cli(ws, huge, capsys)
    assert code == 1 and "safetensors" in line


# -- torchdeck meta.json ----------------------------------------------------------------------------
@pytest.mark.parametrize("files", [5, {"model.safetensors": 5}, "x", None, [1]])
def test_meta_json_with_odd_files_entry_is_corrupt(tmp_path, ws, capsys, files):
    d = tmp_path / "ck"
    d.mkdir()
    save_file(_state(), str(d / "model.safetensors"))
    (d / "meta.json").write_text(json.dumps({"format": "torchdeck-checkpoint", "format_version": 1, "files": files}))
    with pytest.raises(Corrupt):
        formats.inspect(d)
    code, line = _inspect_cli(ws, d, capsys)
    assert code == 1 and ("corrupt" in line.lower() or "incomplete" in line)


# -- pickles with a payload -------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _ExecPayload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _payload_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    out = {}
    for proto in (2, 3, 4, 5):
        for zipped in (True, False):
            p = tmp_path / f"evil-p{proto}-{'zip' if zipped else 'legacy'}.pt"
            torch.save({"w": torch.ones(2), "x": _Payload(marker)}, p, pickle_protocol=proto,
                       _use_new_zipfile_serialization=zipped)
            out[p.name] = p
    p = tmp_path / "evil-lightning.ckpt"
    torch.save({"epoch": 1, "global_step": 2, "pytorch-lightning_version": "2.4.0", "state_dict": _state(),
                "hyper_parameters": {"cfg": _ExecPayload(marker)}}, p, pickle_protocol=4)
    out[p.name] = p
    p = tmp_path / "evil-plain.pkl"
    p.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=5))
    out[p.name] = p
    return out


def test_reduce_payloads_refused_naming_the_global_nothing_runs(tmp_path, ws, capsys):
    marker = tmp_path / "PWNED"
    for name, p in _payload_files(tmp_path, marker).items():
        with pytest.raises(UnsafeFile) as e:
            formats.inspect(p)
        assert ("posix.system" in str(e.value) or "builtins.exec" in str(e.value)), name
        assert e.value.globals, name
        with pytest.raises(UnsafeFile):
            formats.load_weights(p)
        code, line = _inspect_cli(ws, p, capsys)
        assert code == 1 and "refused" in line and ("system" in line or "exec" in line), (name, line)
        assert "Unsupported operand" not in line
        assert not marker.exists(), f"{name}: code from the file ran"


def test_dcp_metadata_with_payload_refused(tmp_path, ws, capsys):
    import torch.distributed.checkpoint as dcp

    d = tmp_path / "dcp"
    dcp.save(_state(), checkpoint_id=str(d))
    marker = tmp_path / "PWNED"
    (d / ".metadata").write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with pytest.raises(UnsafeFile, match="posix.system"):
        formats.inspect(d)
    code, line = _inspect_cli(ws, d, capsys)
    assert code == 1 and "posix.system" in line
    (d / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(Corrupt):
        formats.inspect(d)
    assert not marker.exists()


def test_pickled_module_refused_naming_its_class(tmp_path):
    p = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), p)
    with pytest.raises(UnsafeFile, match="torch.nn.modules.linear.Linear"):
        formats.inspect(p)
    assert formats.inspect(p, trust=True).format == "torch-module"


def test_protocol_4_in_a_subprocess_no_warning_on_stderr(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, evil, pickle_protocol=4)
    good = tmp_path / "good.pt"
    torch.save(_state(), good, pickle_protocol=4)
    wsdir = Workspace.open(tmp_path / "ws").root
    base = [sys.executable, "-m", "torchdeck.tui.cli", "--workspace", str(wsdir), "ckpt", "inspect"]
    out = subprocess.run(base + [str(evil)], env=cli_env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "posix.system" in out.stderr and "Warning" not in out.stderr and not marker.exists()
    out = subprocess.run(base + [str(good), "--json"], env=cli_env(), capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert json.loads(out.stdout)["num_params"] == 10


# -- reliability ------------------------------------------------------------------------------------
def test_truncated_torch_files_at_many_offsets(tmp_path):
    for zipped in (True, False):
        good = tmp_path / f"good-{zipped}.pt"
        torch.save({"epoch": 1, "state_dict": _state()}, good, _use_new_zipfile_serialization=zipped)
        data = good.read_bytes()
        cut = tmp_path / "cut.pt"
        step = max(1, len(data) // 97)
        for n in list(range(0, len(data), step)) + [len(data) - 1]:
            cut.write_bytes(data[:n])
            with pytest.raises(OperationFailed) as e:
                formats.inspect(cut)
            assert not isinstance(e.value, UnsafeFile) and "\n" not in str(e.value), (zipped, n)


def test_shared_references_do_not_make_metadata_endless(tmp_path):
    """A pickle's memo lets a few hundred bytes hold one list fifty times at each of twelve levels
    (50**12 paths; omegaconf's parent links are the same shape): the metadata is cut short, not
    rendered for ever."""
    import time

    deep: list = [1.5]
    for _ in range(12):
        deep = [deep] * 50
    p = tmp_path / "shared.ckpt"
    torch.save({"epoch": 1, "state_dict": _state(), "hyper_parameters": {"deep": deep}}, p)
    assert p.stat().st_size < 10_000
    start = time.monotonic()
    doc = formats.inspect(p).to_json()
    assert time.monotonic() - start < 10 and doc["epoch"] == 1
    assert "..." in json.dumps(doc["metadata"]["hyper_parameters"])


def test_random_bytes_never_crash(tmp_path):
    import random

    rng = random.Random(7)
    p = tmp_path / "rand.bin"
    for i in range(150):
        head = rng.choice([b"", b"\x80", b"\x80\x02", b"\x80\x04\x95", b"PK\x03\x04", b"\x10\0\0\0\0\0\0\0{"])
        p.write_bytes(head + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))))
        try:
            formats.inspect(p)
        except TorchdeckError as e:
            assert isinstance(e, OperationFailed) and "\n" not in str(e), (i, e)


def test_odd_paths_one_line_each(tmp_path, ws, capsys):
    cases = []
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases.append(empty)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    cases.append(fifo)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").mkdir()  # a directory where a file is expected
    cases.append(hf)
    idx = tmp_path / "hf-index"
    idx.mkdir()
    (idx / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    cases.append(idx)
    bad_idx = tmp_path / "hf-bad-index"
    bad_idx.mkdir()
    (bad_idx / "model.safetensors.index.json").write_text("[" * 100_000)
    cases.append(bad_idx)
    odd = tmp_path / "a name with spaces\nand a newline.pt"
    odd.write_bytes(b"\x80\x04garbage")
    cases.append(odd)
    plain_dir = tmp_path / "just-a-dir"
    plain_dir.mkdir()
    cases.append(plain_dir)
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    cases.append(text)
    for p in cases:
        code, line = _inspect_cli(ws, p, capsys)
        assert code == 1, (p, line)


def test_good_file_with_spaces_and_newline_in_name(tmp_path, ws, capsys):
    p = tmp_path / "my model\nv2.safetensors"
    save_file(_state(), str(p))
    assert cli_main(["--workspace", str(ws), "ckpt", "inspect", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_params"] == 10


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, ws, capsys):
    p = tmp_path / "secret.pt"
    torch.save(_state(), p)
    p.chmod(0)
    code, line = _inspect_cli(ws, p, capsys)
    assert code == 1 and "permission" in line
