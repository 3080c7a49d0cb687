"""Built-in models and data sources: each built-in builds, trains on its own data with the loss its
targets call for and exports to ONNX; every data source loads with a deterministic split; every
bad input gets an InvalidRequest naming its cause; data that does not fit a model says so."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import uuid

import pytest
from helpers import StubHooks
from torchdeck.checkpoints import store as checkpoints
from torchdeck.data import sources as data
from torchdeck.errors import InvalidRequest
from torchdeck.models import specs
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

# Three quick epochs per built-in: (optimizer, lr, dataset size) that make each loss fall well.
TRAIN = {
    "linear": ("adam", 0.01, 512),
    "mlp": ("adam", 0.01, 512),
    "cnn": ("adam", 0.005, 512),
    "tiny-transformer": ("adam", 0.005, 2048),
}
OUT_FEATURES = {"linear": 20, "mlp": 5, "cnn": 10, "tiny-transformer": 2}


def trainer(model="builtin:mlp", *, checkpoints_dir=None, **cfg):
    from torchdeck.training.loop import Trainer

    cfg = {"epochs": 1, "dataset_size": 256, "batch_size": 32, "device": "cpu", "threads": 1,
           "flush_interval": 3600.0, **cfg}
    hooks = StubHooks()
    return Trainer(RunConfig(model=model, **cfg), hooks, run_id="t", checkpoints_dir=checkpoints_dir), hooks


def losses(hooks) -> list[float]:
    return [v for e in hooks.events if isinstance(e, ev.Losses) for v in e.values]


# -- built-in models --------------------------------------------------------------------------------
def test_every_builtin_is_tested():
    assert set(specs.BUILTINS) == set(TRAIN) == set(OUT_FEATURES)


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_builtin_builds_and_eats_its_default_data(name):
    b = specs.BUILTINS[name]
    spec = specs.resolve(f"builtin:{name}")
    model = specs.build(spec)
    assert specs.num_params(model) == sum(p.numel() for p in model.parameters()) > 0
    assert model(specs.example_input(spec, 3)).shape == (3, OUT_FEATURES[name])
    d = data.load(b.default_data, size=64)
    assert d.sample_shape == spec.input_shape
    assert str(d.x_train.dtype) == f"torch.{spec.input_dtype}"
    if spec.input_high is not None:
        assert int(d.x_train.max()) < spec.input_high
    assert d.default_loss == b.loss
    data.check_fits(model, d, input_shape=spec.input_shape)


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_builtin_trains_on_its_default_data(name, tmp_path):
    optimizer, lr, size = TRAIN[name]
    t, hooks = trainer(f"builtin:{name}", epochs=3, dataset_size=size, optimizer=optimizer, lr=lr,
                       checkpoints_dir=tmp_path / "ckpts")
    assert t.loss_kind == specs.BUILTINS[name].loss
    outcome = t.run()
    assert outcome.state == "finished"
    values = losses(hooks)
    assert len(values) == t.total_steps and all(v is not None and math.isfinite(v) for v in values)
    k = t.steps_per_epoch
    assert sum(values[-k:]) / k < 0.5 * sum(values[:k]) / k, values
    epochs = [e for e in hooks.events if isinstance(e, ev.EpochEnd)]
    classes = specs.BUILTINS[name].loss == "cross_entropy"
    for e in epochs:
        assert e.val_loss is not None
        assert (e.val_accuracy is not None and 0 <= e.val_accuracy <= 1) if classes else e.val_accuracy is None
    latest = checkpoints.latest_complete(tmp_path / "ckpts")
    assert ("val_accuracy" in latest.meta["metrics"]) == classes
    assert latest.meta["loss"] == t.loss_kind and latest.meta["data"] == specs.BUILTINS[name].default_data
    assert latest.meta["num_classes"] == (OUT_FEATURES[name] if classes else None)
    if classes:
        assert latest.meta["metrics"]["val_accuracy"] == epochs[-1].val_accuracy
        majority = torch.bincount(t.data.y_val).max().item() / len(t.data.y_val)
        assert epochs[-1].val_accuracy > majority + 0.2  # far better than always the commonest class


def test_epoch_record_round_trips_accuracy():
    e = ev.EpochEnd(1, 10, 0.5, 0.4, 0.1, 0.875)
    assert ev.parse(json.loads(ev.dumps(e))) == e
    old = {"type": "epoch", "epoch": 1, "step": 10, "train_loss": 0.5, "val_loss": 0.4, "seconds": 0.1}
    assert ev.parse(old).val_accuracy is None  # a record written before the field still reads


@pytest.mark.parametrize(
    "name, kwargs, shape, out",
    [
        ("mlp", {"hidden": 16, "num_classes": 3, "in_features": 7}, (7,), 3),
        ("mlp", {"depth": 1}, (20,), 5),
        ("cnn", {"channels": 4, "num_classes": 3, "in_channels": 3, "image_size": 16}, (3, 16, 16), 3),
        ("tiny-transformer", {"vocab_size": 10, "seq_len": 8, "d_model": 16, "nhead": 4, "num_classes": 4},
         (8,), 4),
        ("linear", {"in_features": 4, "out_features": 2}, (4,), 2),
    ],
)
def test_builtin_kwargs_override_and_input_follows(name, kwargs, shape, out):
    spec = specs.resolve(f"builtin:{name}", kwargs=kwargs)
    assert spec.input_shape == shape
    model = specs.build(spec)
    assert model(specs.example_input(spec, 2)).shape == (2, out)
    if name == "tiny-transformer":
        assert spec.input_high == kwargs["vocab_size"]


@pytest.mark.parametrize(
    "name, kwargs, words",
    [
        ("mlp", {"width": 3}, r"arguments do not fit.*width"),
        ("cnn", {"kernel": 5}, r"arguments do not fit.*kernel"),
        ("tiny-transformer", {"d_model": 30, "nhead": 4}, r"ValueError: d_model=30 must be divisible by nhead=4"),
        ("mlp", {"depth": 0}, r"depth must be at least 1"),
    ],
)
def test_builtin_bad_kwargs_are_invalid(name, kwargs, words):
    with pytest.raises(InvalidRequest, match=words):
        specs.build(specs.resolve(f"builtin:{name}", kwargs=kwargs))


def test_transformer_refuses_too_long_sequence():
    model = specs.build(specs.resolve("builtin:tiny-transformer", kwargs={"seq_len": 8}))
    with pytest.raises(ValueError, match="12 tokens is longer than seq_len=8"):
        model(torch.zeros(2, 12, dtype=torch.long))


# -- the loss follows the targets, unless chosen ------------------------------------------------------
def test_loss_follows_targets_and_can_be_chosen():
    assert trainer("builtin:mlp")[0].loss_kind == "cross_entropy"
    assert trainer("builtin:linear")[0].loss_kind == "mse"
    t, hooks = trainer("builtin:mlp", loss="mse", epochs=2, optimizer="adam")  # against one-hot targets
    assert t.loss_kind == "mse" and t.run().state == "finished"
    epochs = [e for e in hooks.events if isinstance(e, ev.EpochEnd)]
    assert epochs[-1].val_accuracy is not None and epochs[-1].val_loss < 1.0


def test_cross_entropy_on_float_targets_reads_probabilities(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g)
    y = torch.softmax(torch.randn(64, 20, generator=g), dim=1)
    torch.save((x, y), tmp_path / "probs.pt")
    t, _ = trainer("builtin:linear", data=f"file:{tmp_path / 'probs.pt'}", loss="cross_entropy")
    assert t.data.target_kind == "regression" and t.loss_kind == "cross_entropy"
    assert t.run().state == "finished"


def test_unknown_loss_is_invalid():
    with pytest.raises(InvalidRequest, match="loss"):
        trainer("builtin:mlp", loss="hinge")


def test_validation_in_chunks_matches_one_pass():
    t, _ = trainer("builtin:mlp", dataset_size=30000)  # 3000 validation samples: 3 chunks
    assert len(t.data.x_val) > data.VAL_CHUNK
    loss, acc = t.validate()
    t.model.eval()
    with torch.no_grad():
        out = t.model(t.data.x_val)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(out, t.data.y_val).item(), rel=1e-5)
    assert acc == pytest.approx((out.argmax(1) == t.data.y_val).float().mean().item(), abs=1e-6)


# -- data sources -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, x_shape, x_dtype, y_shape, kind, classes",
    [
        ("regression", (10,), torch.float32, (20,), "regression", None),
        ("classification", (20,), torch.float32, (), "classes", 5),
        ("image", (1, 28, 28), torch.float32, (), "classes", 10),
        ("sequence", (32,), torch.int64, (), "classes", 2),
    ],
)
def test_synthetic_sets(name, x_shape, x_dtype, y_shape, kind, classes):
    d = data.load(f"synthetic:{name}", size=200, seed=3)
    assert len(d.x_train) == 180 and len(d.x_val) == 20 and len(d.y_train) == 180
    assert d.sample_shape == x_shape and d.x_train.dtype == x_dtype and d.target_shape == y_shape
    assert d.target_kind == kind and d.num_classes == classes
    again = data.load(f"synthetic:{name}", size=200, seed=3)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_val, again.y_val)
    other = data.load(f"synthetic:{name}", size=200, seed=4)
    assert not torch.equal(d.x_train, other.x_train)
    if classes:
        counts = torch.bincount(torch.cat([d.y_train, d.y_val]), minlength=classes)
        assert (counts > 0).all() and len(counts) == classes  # every class present, none beyond


def test_synthetic_default_sizes_and_regression_unchanged():
    d = data.load("synthetic:image")
    assert len(d.x_train) + len(d.x_val) == data.SYNTHETIC_SIZES["image"]
    # The demo's data is exactly this (the README's figures and the snapshots depend on it): a
    # linear teacher over features on scales 1 to 0.03, so the demo's loss falls over its whole run.
    r = data.load("synthetic:regression", size=100)
    g = torch.Generator().manual_seed(1234)
    w, b = torch.randn(20, 10, generator=g) / 10**0.5, torch.randn(20, generator=g) * 0.5
    gx = torch.Generator().manual_seed(5678)
    x = torch.randn(100, 10, generator=gx) * torch.logspace(0, -1.5, 10)
    y = x @ w.T + b + 0.01 * torch.randn(100, 20, generator=gx)
    assert torch.equal(r.x_val, x[:10]) and torch.equal(r.y_train, y[10:])


def _xy(n=50, features=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def _same_samples(d, x, y):
    """d holds exactly the rows of (x, y), each once, split into train and validation."""
    got = sorted(map(tuple, torch.cat([torch.cat([d.x_train, d.x_val]).float(),
                                        torch.cat([d.y_train, d.y_val]).float().reshape(len(x), -1)], 1).tolist()))
    want = sorted(map(tuple, torch.cat([x.float(), y.float().reshape(len(x), -1)], 1).tolist()))
    return got == want


def _assert_deterministic(spec, import_root=None):
    a = data.load(spec, seed=1, import_root=import_root)
    b = data.load(spec, seed=1, import_root=import_root)
    c = data.load(spec, seed=2, import_root=import_root)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_val, c.x_val)  # another seed, another split
    return a


def test_npz_source(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x.double().numpy(), y=y.int().numpy())  # float64 and int32 on disk
    d = _assert_deterministic(f"file:{tmp_path / 'd.npz'}")
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.target_kind == "classes" and d.num_classes == int(y.max()) + 1
    assert len(d.x_train) == 45 and len(d.x_val) == 5 and _same_samples(d, x, y)
    assert str(tmp_path / "d.npz") in d.source


def test_npz_regression_and_relative_path(tmp_path):
    np.savez(tmp_path / "r.npz", x=np.random.rand(20, 3), y=np.random.rand(20, 2))
    d = data.load("file:r.npz", import_root=tmp_path)
    assert d.target_kind == "regression" and d.num_classes is None and d.y_train.dtype == torch.float32
    assert data.check_spec("file:r.npz", import_root=tmp_path) == f"file:{tmp_path / 'r.npz'}"


def test_csv_sources(tmp_path):
    rows = ["a,label,b"] + [f"{i * 0.5},{i % 3},{-i}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    d = _assert_deterministic(f"file:{tmp_path / 'd.csv'}?target=label")
    assert d.target_kind == "classes" and d.num_classes == 3 and d.sample_shape == (2,)
    assert d.feature_names == ["a", "b"] and d.target_name == "label"
    x = torch.tensor([[i * 0.5, -i] for i in range(30)])
    assert _same_samples(d, x, torch.tensor([i % 3 for i in range(30)]))
    # No target named: the last column. Fractional values there: regression.
    with pytest.raises(InvalidRequest, match=r"found -29 \(for numeric targets use kind=regression\)"):
        data.load(f"file:{tmp_path / 'd.csv'}")  # whole numbers are classes, and classes start at 0
    last = data.load(f"file:{tmp_path / 'd.csv'}?kind=regression")
    assert last.target_name == "b" and last.target_kind == "regression" and last.feature_names == ["a", "label"]
    (tmp_path / "f.csv").write_text("p,q\n" + "".join(f"{i},{i / 7:.4f}\n" for i in range(10)))
    f = data.load(f"file:{tmp_path / 'f.csv'}")
    assert f.target_kind == "regression" and f.target_name == "q" and f.sample_shape == (1,)
    # No header row: columns are named by position; kind= overrides the targets' own kind.
    (tmp_path / "n.csv").write_text("".join(f"{i},{i + 1},{i % 2}\n" for i in range(10)))
    n = data.load(f"file:{tmp_path / 'n.csv'}?target=2&kind=regression")
    assert n.feature_names == ["0", "1"] and n.target_kind == "regression" and len(n.x_train) + len(n.x_val) == 10


def test_pt_sources(tmp_path):
    x, y = _xy(40)
    torch.save((x, y), tmp_path / "tuple.pt")
    torch.save({"x": x, "y": y.float(), "note": torch.tensor(1)}, tmp_path / "dict.pth")
    t = _assert_deterministic(f"file:{tmp_path / 'tuple.pt'}")
    assert t.target_kind == "classes" and _same_samples(t, x, y)
    d = data.load(f"file:{tmp_path / 'dict.pth'}")
    assert d.target_kind == "regression"
    k = data.load(f"file:{tmp_path / 'dict.pth'}?kind=classes")
    assert k.target_kind == "classes" and k.y_train.dtype == torch.int64


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    """A user's module of dataset factories on an import root outside sys.path."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"td_userdata_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "root"
    root.mkdir()
    (root / f"{name}.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import Dataset, IterableDataset, TensorDataset

        class Squares(Dataset):
            def __len__(self):
                return 24
            def __getitem__(self, i):
                return [float(i), float(i) / 2], i % 4

        class Stream(IterableDataset):
            def __iter__(self):
                for i in range(12):
                    yield {"x": torch.full((3,), float(i)), "y": torch.tensor([i * 0.1])}

        def squares():
            return Squares()

        def tensors():
            return TensorDataset(torch.arange(20.0).reshape(10, 2), torch.arange(10))

        def stream():
            return Stream()

        def boom():
            raise RuntimeError("no data for you")

        def a_list():
            return [(1, 2)]

        class Ragged(Dataset):
            def __len__(self):
                return 3
            def __getitem__(self, i):
                return torch.zeros(i + 1), 0

        def ragged():
            return Ragged()

        class Triples(Dataset):
            def __len__(self):
                return 3
            def __getitem__(self, i):
                return 1.0, 2.0, 3.0

        def triples():
            return Triples()
    """))
    yield name, root
    sys.modules.pop(name, None)


def test_callable_sources(user_data):
    name, root = user_data
    d = _assert_deterministic(f"{name}:squares", import_root=root)
    assert d.sample_shape == (2,) and d.x_train.dtype == torch.float32 and d.target_kind == "classes"
    assert d.num_classes == 4 and len(d.x_train) + len(d.x_val) == 24
    assert sys.path[-1] == str(root.resolve()) and str(root.resolve()) not in sys.path[:-1]
    t = data.load(f"{name}:tensors", import_root=root)
    assert t.num_classes == 10 and _same_samples(t, torch.arange(20.0).reshape(10, 2), torch.arange(10))
    s = data.load(f"{name}:stream", import_root=root)
    assert s.sample_shape == (3,) and s.target_shape == (1,) and s.target_kind == "regression"


def test_describe(tmp_path):
    info = data.describe("synthetic:image", size=100, seed=2)
    assert (info.train_size, info.val_size) == (90, 10)
    assert info.x_shape == [1, 28, 28] and info.x_dtype == "float32" and info.y_shape == [] and info.y_dtype == "int64"
    assert info.target_kind == "classes" and info.num_classes == 10 and sum(info.class_counts) == 100
    assert info.default_loss == "cross_entropy" and "synthetic" in info.source and info.seed == 2
    json.dumps(info.to_json())
    assert any(line.startswith("target       classes: 10") for line in info.lines())
    (tmp_path / "d.csv").write_text("u,v,price\n" + "".join(f"{i},{i * 2},{i * 1.5}\n" for i in range(10)))
    c = data.describe(f"file:{tmp_path / 'd.csv'}?target=price")
    assert c.target_kind == "regression" and c.num_classes is None and c.class_counts is None
    assert c.feature_names == ["u", "v"] and c.target_name == "price" and c.x_shape == [2]
    assert str(tmp_path / "d.csv") in c.source and c.spec == f"file:{tmp_path / 'd.csv'}?target=price"
    assert "features     u, v" in c.lines()


# -- bad input: each its own message ----------------------------------------------------------------
def _write_bad(tmp_path, what):
    p = tmp_path
    if what == "npz-no-y":
        np.savez(p / "d.npz", x=np.zeros((4, 2)), labels=np.zeros(4))
        return "file:d.npz"
    if what == "npz-lengths":
        np.savez(p / "d.npz", x=np.zeros((4, 2)), y=np.zeros(5))
        return "file:d.npz"
    if what == "npz-pickled":
        np.savez(p / "d.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
        return "file:d.npz"
    if what == "npz-corrupt":
        (p / "d.npz").write_bytes(b"not a zip file")
        return "file:d.npz"
    if what == "csv-no-target":
        (p / "d.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
        return "file:d.csv?target=label"
    if what == "csv-text":
        (p / "d.csv").write_text("a,b,label\n1,2,0\n3,abc,1\n")
        return "file:d.csv"
    if what == "csv-empty-cell":
        (p / "d.csv").write_text("a,b,label\n1,2,0\n3,,1\n")
        return "file:d.csv"
    if what == "csv-short-row":
        (p / "d.csv").write_text("a,b,label\n1,2,0\n3,1\n")
        return "file:d.csv"
    if what == "csv-empty":
        (p / "d.csv").write_text("")
        return "file:d.csv"
    if what == "csv-negative-classes":
        (p / "d.csv").write_text("a,label\n1,-1\n2,1\n")
        return "file:d.csv"
    if what == "pt-three":
        torch.save((torch.zeros(3), torch.zeros(3), torch.zeros(3)), p / "d.pt")
        return "file:d.pt"
    if what == "pt-one":
        torch.save(torch.zeros(3), p / "d.pt")
        return "file:d.pt"
    if what == "pt-dict":
        torch.save({"inputs": torch.zeros(3), "y": torch.zeros(3)}, p / "d.pt")
        return "file:d.pt"
    if what == "pt-not-tensor":
        torch.save({"x": [1, 2], "y": torch.zeros(2)}, p / "d.pt")
        return "file:d.pt"
    if what == "pt-lengths":
        torch.save((torch.zeros(3, 2), torch.zeros(4)), p / "d.pt")
        return "file:d.pt"
    if what == "pt-unsafe":
        import argparse

        torch.save(argparse.Namespace(x=torch.zeros(2), y=torch.zeros(2)), p / "d.pt")
        return "file:d.pt"
    if what == "one-sample":
        torch.save((torch.zeros(1, 2), torch.zeros(1)), p / "d.pt")
        return "file:d.pt"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what, words",
    [
        ("npz-no-y", r"d\.npz has no 'y' array \(it has 'x', 'labels'\)"),
        ("npz-lengths", r"x has 4 samples but y has 5"),
        ("npz-pickled", r"cannot read its arrays without pickle"),
        ("npz-corrupt", r"d\.npz is not a readable \.npz file"),
        ("csv-no-target", r"d\.csv has no column 'label' \(its columns: a, b, c\)"),
        ("csv-text", r"d\.csv line 3, column 'b': 'abc', not a number"),
        ("csv-empty-cell", r"d\.csv line 3, column 'b': an empty value"),
        ("csv-short-row", r"d\.csv line 3 has 2 values; the header has 3 columns"),
        ("csv-empty", r"d\.csv is empty"),
        ("csv-negative-classes", r"class targets must be whole numbers from 0, found -1"),
        ("pt-three", r"holds a tuple of 3 items; expected two tensors"),
        ("pt-one", r"holds a Tensor; expected two tensors"),
        ("pt-dict", r"holds a dict without 'x' \(its keys: 'inputs', 'y'\)"),
        ("pt-not-tensor", r"x is a list, not a tensor"),
        ("pt-lengths", r"x has 3 samples but y has 4"),
        ("pt-unsafe", r"needs more than plain tensors to load: it wants argparse\.Namespace.*weights_only=True"),
        ("one-sample", r"has 1 sample\(s\); a train/validation split needs at least 2"),
    ],
)
def test_bad_data_files_name_the_cause(tmp_path, what, words):
    spec = _write_bad(tmp_path, what)
    with pytest.raises(InvalidRequest, match=words):
        data.load(spec, import_root=tmp_path)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("file:missing.npz", r"data file .*missing\.npz does not exist"),
        ("file:.", r"unknown data file type"),
        ("file:d.txt", r"unknown data file type '\.txt' \(expected \.npz, \.csv, \.pt, \.pth\)"),
        ("file:d.npz?target=y", r"target= option is for \.csv files"),
        ("file:d.csv?colour=red", r"unknown data file option 'colour'"),
        ("file:d.csv?kind=labels", r"kind must be classes or regression"),
        ("synthetic:mnist", r"unknown synthetic data set 'mnist' \(synthetic sets: regression, classification"),
        ("nonsense", r"unknown data spec 'nonsense'"),
        ("", r"no data spec"),
    ],
)
def test_bad_specs_name_the_cause(tmp_path, spec, words):
    with pytest.raises(InvalidRequest, match=words):
        data.check_spec(spec, import_root=tmp_path)
    with pytest.raises(InvalidRequest, match=words):
        data.load(spec, import_root=tmp_path)


@pytest.mark.parametrize(
    "attr, words",
    [
        ("boom", r"raised RuntimeError: no data for you"),
        ("a_list", r"returned list, not a torch\.utils\.data\.Dataset"),
        ("ragged", r"item 1's x has shape \(2,\), item 0's has \(1,\)"),
        ("triples", r"item 0 is a tuple of 3 items, not an \(x, y\) pair"),
        ("missing", r"has no attribute 'missing'"),
    ],
)
def test_bad_callables_name_the_cause(user_data, attr, words):
    name, root = user_data
    with pytest.raises(InvalidRequest, match=words):
        data.load(f"{name}:{attr}", import_root=root)


def test_callable_module_not_found(tmp_path):
    with pytest.raises(InvalidRequest, match="cannot import 'td_no_such_data_mod'"):
        data.load("td_no_such_data_mod:make", import_root=tmp_path)


# -- data that does not fit the model ---------------------------------------------------------------
def test_images_do_not_fit_the_mlp():
    spec = specs.resolve("builtin:mlp")
    d = data.load("synthetic:image", size=16)
    with pytest.raises(InvalidRequest) as e:
        data.check_fits(specs.build(spec), d, input_shape=spec.input_shape, model_name="model builtin:mlp")
    msg = str(e.value)
    for words in ("synthetic:image", "(1, 28, 28)", "builtin:mlp", "(20,)", "RuntimeError", "mat1 and mat2"):
        assert words in msg, msg
    with pytest.raises(InvalidRequest, match=r"synthetic:image does not fit model builtin:mlp"):
        trainer("builtin:mlp", data="synthetic:image")


def test_float_ids_do_not_fit_the_transformer():
    with pytest.raises(InvalidRequest, match=r"samples \(10,\) float32 raised RuntimeError"):
        trainer("builtin:tiny-transformer", data="synthetic:regression")


def test_too_few_class_scores():
    with pytest.raises(InvalidRequest, match="output has 3 class scores but the data has 5 classes"):
        trainer("builtin:mlp", model_spec=specs.resolve("builtin:mlp", kwargs={"num_classes": 3}).to_json())


def test_regression_targets_of_another_shape(tmp_path):
    torch.save((torch.randn(20, 10), torch.randn(20, 3)), tmp_path / "d.pt")
    with pytest.raises(InvalidRequest, match=r"output \(20,\) per sample, targets \(3,\) per sample"):
        trainer("builtin:linear", data=f"file:{tmp_path / 'd.pt'}")


def test_preflight_checks_before_a_launch(tmp_path):
    from torchdeck.training.loop import preflight

    assert preflight(RunConfig(model="builtin:cnn")) == "cross_entropy"
    assert preflight(RunConfig(model="builtin:mlp", loss="mse")) == "mse"
    torch.save((torch.randn(8, 10), torch.randn(8, 20)), tmp_path / "d.pt")
    assert preflight(RunConfig(model="builtin:linear", data="file:d.pt", import_root=str(tmp_path))) == "mse"
    with pytest.raises(InvalidRequest, match=r"synthetic:sequence does not fit model builtin:cnn"):
        preflight(RunConfig(model="builtin:cnn", data="synthetic:sequence"))
    with pytest.raises(InvalidRequest, match=r"data file .*nope\.npz does not exist"):
        preflight(RunConfig(model="builtin:cnn", data="file:nope.npz", import_root=str(tmp_path)))


def test_check_fits_leaves_the_model_as_it_was():
    model = specs.build(specs.resolve("builtin:cnn"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data.check_fits(model, data.load("synthetic:image", size=16))
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- export -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "tiny-transformer"])
def test_builtin_exports_to_onnx(name, tmp_path):
    from torchdeck.exports import onnx as exports
    from torchdeck.exports.validate import LARGE_BATCH

    t, _ = trainer(f"builtin:{name}", dataset_size=128, checkpoints_dir=tmp_path / "ckpts")
    assert t.run().state == "finished"
    latest = checkpoints.latest_complete(tmp_path / "ckpts")
    report = exports.export_onnx(latest.path, tmp_path / f"{name}.onnx")
    assert report.ok and report.checker_ok and report.exporter == "dynamo"
    assert [row["case"] for row in report.validation["rows"]] == ["batch 1", f"batch {LARGE_BATCH}"]
    assert report.validation["passed"] and report.max_abs_diff < exports.ATOL
    assert (tmp_path / f"{name}.onnx").exists()
