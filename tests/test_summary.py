"""Model summary (torchdeck.models.summary): parameter counts against `sum(p.numel() for p in
model.parameters())` of the same model built for real, output shapes from the meta forward
pass, forward errors, the meta device really used, the memory arithmetic, and the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from helpers import REPO
from torchdeck.errors import InvalidRequest, UnsafeFile
from torchdeck.models import specs, summary
from torchdeck.models.specs import ModelSpec

torch = pytest.importorskip("torch")

MODELS = '''
import torch
import torch.nn as nn


SCALE = torch.full((3,), 2.0)  # a module-level tensor: made when the module is first imported


def make_scaled():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(10, 3)

        def forward(self, x):
            return self.lin(x) * SCALE
    return Scaled()


def make_frozen():
    """A frozen backbone (requires_grad False) under a trainable head."""
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16))
            self.head = nn.Linear(16, 3)
            self.backbone.requires_grad_(False)

        def forward(self, x):
            return self.head(self.backbone(x))
    return Frozen()


def make_tied(vocab=50, dim=8):
    """Embedding and output projection share one weight."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.mix = nn.Linear(dim, dim)
            self.head = nn.Linear(dim, vocab, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(torch.relu(self.mix(self.embed(ids))))
    return Tied()


def make_nested():
    """Sequential inside a ModuleList inside a module."""
    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.norm = nn.LayerNorm(d)

        def forward(self, x):
            return self.norm(x + self.ff(x))

    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Linear(10, 12), nn.ReLU(inplace=True))
            self.blocks = nn.ModuleList([Block(12) for _ in range(3)])
            self.out = nn.Linear(12, 2)

        def forward(self, x):
            x = self.stem(x)
            for b in self.blocks:
                x = b(x)
            return self.out(x)
    return Nested()


def make_bn():
    return nn.Sequential(nn.Linear(10, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1))


def make_tuple():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(10, 4)
            self.b = nn.Linear(10, 8)

        def forward(self, x):
            return self.a(x), self.b(x), None
    return Pair()


def make_picky():
    """Refuses anything but 3 channels, in a submodule, with its own message."""
    class Check(nn.Module):
        def forward(self, x):
            if x.shape[1] != 3:
                raise ValueError(f"expected 3 channels, got {x.shape[1]}\\nsecond line")
            return x

    return nn.Sequential(nn.Identity(), Check(), nn.Flatten())


def make_data_dependent():
    """Reads its input's values: cannot run on meta tensors."""
    class DD(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(10, 5)

        def forward(self, x):
            if x.sum().item() > 1e9:
                return -self.lin(x)
            return self.lin(x)
    return DD()


def make_numpy_in_init():
    """Builds fine on the CPU, not on meta (numpy() of a meta tensor fails)."""
    lin = nn.Linear(10, 5)
    _ = torch.zeros(3).numpy()
    return lin


def make_shared_module():
    lin = nn.Linear(6, 6)
    return nn.Sequential(lin, nn.ReLU(), lin)


def make_lazy():
    return nn.Sequential(nn.LazyLinear(7), nn.ReLU(), nn.Linear(7, 2))


def make_on_cpu():
    """Asks for the CPU itself, whatever the current device."""
    return nn.Sequential(nn.Linear(10, 5, device="cpu"), nn.ReLU())


def make_huge():
    """One 50M-parameter Linear: 200 MB of fp32 if it were allocated."""
    return nn.Linear(10_000, 5_000)


def make_encoder(d=32, heads=4, layers=2):
    layer = nn.TransformerEncoderLayer(d, heads, 4 * d, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
'''


@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    """A module of test models in a temporary import root, under a name no other test uses
    (Python caches imported modules by name)."""
    root = tmp_path_factory.mktemp("summary-models")
    name = f"summary_models_{uuid.uuid4().hex[:8]}"
    (root / f"{name}.py").write_text(MODELS)
    yield name, root
    sys.modules.pop(name, None)
    if str(root.resolve()) in sys.path:
        sys.path.remove(str(root.resolve()))


def user_spec(user_models, fn, shape=(10,), **kw):
    name, _ = user_models
    return ModelSpec(spec=f"{name}:{fn}", input_shape=shape, **kw)


def summarize_user(user_models, fn, shape=(10,), spec_kw=None, **kw):
    return summary.summarize(user_spec(user_models, fn, shape, **(spec_kw or {})), import_root=user_models[1], **kw)


def real_counts(spec, import_root=None):
    model = specs.build(spec, import_root=import_root)
    return (
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        model,
    )


def assert_counts_match(s, spec, import_root=None):
    total, trainable, model = real_counts(spec, import_root)
    assert s.params_total == total
    assert s.params_trainable == trainable
    assert s.params_frozen == total - trainable
    root = s.layer("")
    assert (root.total, root.total_trainable, root.total_frozen) == (total, trainable, total - trainable)
    # Own counts attribute every parameter exactly once, so they add up to the total.
    assert sum(info.params for info in s.layers) == total
    assert sum(info.params_frozen for info in s.layers) == total - trainable
    # And each module's recursive count is that submodule's own parameters() sum.
    real = dict(model.named_modules(remove_duplicate=False))
    for info in s.layers:
        assert info.total == sum(p.numel() for p in real[info.path].parameters()), info.path
        assert info.type == type(real[info.path]).__name__
    assert [info.path for info in s.layers] == [p for p, _ in model.named_modules(remove_duplicate=False)]
    return model


# -- counts ------------------------------------------------------------------------------------------
def test_builtin_linear_counts_shapes_and_json():
    spec = specs.resolve("builtin:linear")
    s = summary.summarize(spec, batch_size=4)
    assert s.device_used == "meta" and s.meta_error is None
    assert_counts_match(s, spec)
    assert s.params_total == 220 and s.params_frozen == 0 and s.param_tensors == 2
    assert s.input_shape == [4, 10] and s.output_shape == [4, 20] and s.forward_mode == "train"
    assert s.layer("").output_text == "[4, 20]" and s.layer("").extra.startswith("in_features=10")
    assert s.repr == "Linear(in_features=10, out_features=20, bias=True)"
    assert s.sizes["params"] == {"as_built": 880, "fp32": 880, "bf16": 440, "fp16": 440, "int8": 220}
    d = json.loads(json.dumps(s.to_json()))  # plain JSON types only
    assert d["params"] == {"total": 220, "trainable": 220, "frozen": 0, "tensors": 2, "dtypes": {"float32": 220},
                           "uninitialized": 0}
    assert d["forward"]["output_shape"] == [4, 20] and d["device_used"] == "meta"
    assert d["layers"][0]["path"] == "" and d["layers"][0]["output"] == "[4, 20]"
    assert d["memory"]["batch_size"] == 4 and d["spec"]["spec"] == "builtin:linear"


@pytest.mark.parametrize("name", sorted(specs.BUILTINS))
def test_every_builtin_summarizes_on_meta(name):
    spec = specs.resolve(f"builtin:{name}")
    s = summary.summarize(spec, batch_size=3)
    assert s.device_used == "meta" and s.forward_error is None, (s.meta_error, s.forward_error)
    model = assert_counts_match(s, spec)
    assert s.output_shape == list(model(specs.example_input(spec, 3)).shape)


def test_frozen_submodule_counts_as_frozen(user_models):
    s = summarize_user(user_models, "make_frozen", batch_size=2)
    assert_counts_match(s, user_spec(user_models, "make_frozen"), user_models[1])
    assert s.params_frozen == 10 * 16 + 16 + 16 * 16 + 16
    assert s.params_trainable == 16 * 3 + 3
    backbone = s.layer("backbone")
    assert backbone.total_frozen == s.params_frozen and backbone.total_trainable == 0
    assert s.layer("backbone.0").params_frozen == 176 and s.layer("backbone.0").params_trainable == 0
    assert s.layer("head").params_trainable == 51 and s.layer("head").output_shape == [2, 3]
    # Frozen weights take memory but have no gradients and no optimizer state.
    m = s.memory
    assert m.weights == 4 * s.params_total and m.gradients == 4 * s.params_trainable
    assert m.optimizer_state == 2 * 4 * s.params_trainable


def test_tied_weights_count_once(user_models):
    s = summarize_user(user_models, "make_tied", shape=(5,), spec_kw={"input_dtype": "int64", "input_high": 50},
                       batch_size=3)
    model = assert_counts_match(s, user_spec(user_models, "make_tied", (5,)), user_models[1])
    assert s.params_total == 50 * 8 + 8 * 8 + 8  # the head's weight is the embedding's
    assert s.params_total < sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False))
    head = s.layer("head")
    assert head.params == 0 and head.shared == ["weight = embed.weight"] and head.total == 400
    assert s.layer("embed").params == 400
    assert s.output_shape == [3, 5, 50] and s.input_dtype == "int64"
    assert s.sizes["params"]["fp32"] == 4 * s.params_total


def test_nested_sequential_and_modulelist_tree(user_models):
    s = summarize_user(user_models, "make_nested", batch_size=4)
    assert_counts_match(s, user_spec(user_models, "make_nested"), user_models[1])
    root = s.layer("")
    assert root.children == ["stem", "blocks", "out"] and root.parent is None and root.depth == 0
    blocks = s.layer("blocks")
    assert blocks.type == "ModuleList" and blocks.children == ["blocks.0", "blocks.1", "blocks.2"]
    assert blocks.output_shape is None and blocks.calls == 0  # a ModuleList is never called
    ff = s.layer("blocks.1.ff.2")
    assert (ff.name, ff.depth, ff.parent, ff.type) == ("2", 4, "blocks.1.ff", "Linear")
    assert ff.output_shape == [4, 12] and s.layer("blocks.1.ff.0").output_shape == [4, 24]
    assert s.layer("blocks.2.norm").output_shape == [4, 12] and s.output_shape == [4, 2]
    for info in s.layers:  # children and parents agree
        for child in info.children:
            assert s.layer(child).parent == info.path and s.layer(child).depth == info.depth + 1


def test_buffers_batchnorm(user_models):
    s = summarize_user(user_models, "make_bn", batch_size=8)
    assert_counts_match(s, user_spec(user_models, "make_bn"), user_models[1])
    # running_mean, running_var (6 floats each) and num_batches_tracked (one int64)
    assert (s.buffers_count, s.buffers_elements, s.buffers_bytes) == (3, 13, 6 * 4 * 2 + 8)
    assert s.layer("1").buffers == 13 and s.layer("1").params == 12
    p = s.params_total
    assert s.sizes["params_and_buffers"]["fp32"] == 4 * p + 48 + 8
    assert s.sizes["params_and_buffers"]["bf16"] == 2 * p + 24 + 8  # the int64 buffer is not cast
    assert s.sizes["params_and_buffers"]["int8"] == p + 12 + 8
    assert s.memory.buffers == 56 and s.forward_mode == "train"


def test_batchnorm_at_batch_one_falls_back_to_eval_mode(user_models):
    """Training mode refuses one value per channel; the shapes still come from eval mode."""
    s = summarize_user(user_models, "make_bn", batch_size=1)
    assert s.forward_error is None and s.forward_mode == "eval" and s.device_used == "meta"
    assert s.output_shape == [1, 1] and s.layer("1").output_shape == [1, 6]


def test_tuple_output_records_each_item(user_models):
    s = summarize_user(user_models, "make_tuple", batch_size=2)
    assert_counts_match(s, user_spec(user_models, "make_tuple"), user_models[1])
    assert s.output_shape == [[2, 4], [2, 8], "NoneType"]
    assert s.layer("").output_text == "([2, 4], [2, 8], NoneType)"
    assert s.layer("b").output_shape == [2, 8]


def test_transformer_encoder_paths_and_shapes(user_models):
    s = summarize_user(user_models, "make_encoder", shape=(7, 32), batch_size=2)
    assert_counts_match(s, user_spec(user_models, "make_encoder", (7, 32)), user_models[1])
    assert s.device_used == "meta" and s.forward_error is None
    attn = s.layer("layers.0.self_attn")
    assert attn.type == "MultiheadAttention" and attn.depth == 3 and attn.parent == "layers.0"
    assert attn.params == 3 * 32 * 32 + 3 * 32  # in_proj; out_proj is its child
    assert attn.output_shape == [[2, 7, 32], "NoneType"]  # (output, no attention weights)
    assert s.layer("layers.1.linear1").output_shape == [2, 7, 128]
    assert s.output_shape == [2, 7, 32]
    assert "TransformerEncoderLayer" in s.repr


def test_shared_module_listed_at_both_paths(user_models):
    s = summarize_user(user_models, "make_shared_module", shape=(6,), batch_size=3)
    assert_counts_match(s, user_spec(user_models, "make_shared_module", (6,)), user_models[1])
    assert s.params_total == 42
    first, second = s.layer("0"), s.layer("2")
    assert second.same_as == "0" and first.same_as is None
    assert first.params == 42 and second.params == 0 and second.total == 42
    assert first.calls == 2 and second.calls == 2 and second.output_shape == [3, 6]


def test_user_module_is_imported_outside_the_meta_device(tmp_path):
    """The summary may be the first to import the user's module: its module-level tensors must
    be real, or every later real build in this process would compute with meta tensors."""
    name = f"summary_first_import_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODELS)
    spec = ModelSpec(spec=f"{name}:make_scaled", input_shape=(10,))
    try:
        s = summary.summarize(spec, import_root=tmp_path, batch_size=2)
        assert s.output_shape == [2, 3]
        assert sys.modules[name].SCALE.device.type == "cpu"
        # Its forward mixes that real tensor with meta ones, so the shapes come from the CPU.
        assert s.device_used == "cpu" and "meta" in s.meta_error
        model = specs.build(spec, import_root=tmp_path)
        assert model(torch.ones(2, 10)).shape == (2, 3)
    finally:
        sys.modules.pop(name, None)
        if str(tmp_path.resolve()) in sys.path:
            sys.path.remove(str(tmp_path.resolve()))


def test_lazy_module_counts_after_the_forward_pass(user_models):
    s = summarize_user(user_models, "make_lazy", shape=(5,), batch_size=3)
    assert s.device_used == "meta" and s.uninitialized == 0
    assert s.params_total == 5 * 7 + 7 + 7 * 2 + 2 and s.layer("0").output_shape == [3, 7]
    # Without an input shape the lazy layer has no shape yet: said, and left out of the counts.
    s = summarize_user(user_models, "make_lazy", shape=None)
    assert s.uninitialized == 2 and s.params_total == 16 and s.to_json()["params"]["uninitialized"] == 2


# -- forward errors and fallbacks ----------------------------------------------------------------------
def test_rejected_input_shape_is_recorded_not_raised():
    spec = ModelSpec(spec="builtin:linear", input_shape=(7,))
    s = summary.summarize(spec, batch_size=4)
    # A small model is tried on the CPU too, which gives torch's usual message.
    assert s.forward_error == "mat1 and mat2 shapes cannot be multiplied (4x7 and 10x20)"
    assert s.forward_error_type == "RuntimeError" and s.forward_error_at == ""
    assert s.device_used == "cpu" and "[4, 7]" in s.meta_error
    assert s.output_shape is None and s.memory.activations is None
    assert s.memory.total == s.memory.weights + s.memory.gradients + s.memory.optimizer_state
    assert s.params_total == 220  # everything else is still there
    d = s.to_json()["forward"]
    assert d["error"] == s.forward_error and d["input_shape"] == [4, 7]

    # A model too large for the CPU check keeps the meta device and its message.
    s = summary.summarize(spec, batch_size=4, cpu_fallback_max_bytes=0)
    assert s.device_used == "meta" and s.meta_error is None
    assert "[4, 7]" in s.forward_error and "[10, 20]" in s.forward_error

    with pytest.raises(InvalidRequest) as e:
        summary.check_forward(spec, batch_size=4)
    assert str(e.value) == (
        "builtin:linear: an input of shape (4, 7) float32 was rejected in the model (Linear): "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x7 and 10x20)"
    )
    with pytest.raises(InvalidRequest, match=r"\(2, 7\).*mat1 and mat2"):
        summary.summarize(spec, batch_size=2, strict=True)


def test_forward_error_names_the_module_and_the_first_line(user_models):
    s = summarize_user(user_models, "make_picky", shape=(5, 4))
    assert s.forward_error == "expected 3 channels, got 5" and s.forward_error_type == "ValueError"
    assert s.forward_error_at == "1"
    with pytest.raises(InvalidRequest, match=r"\(1, 5, 4\) float32 was rejected in 1 \(Check\): ValueError: "
                                             r"expected 3 channels, got 5$"):
        summary.check_forward(user_spec(user_models, "make_picky", (5, 4)), import_root=user_models[1])
    ok = summarize_user(user_models, "make_picky", shape=(3, 4), batch_size=2)
    assert ok.forward_error is None and ok.output_shape == [2, 12]


def test_data_dependent_forward_falls_back_to_cpu(user_models):
    s = summarize_user(user_models, "make_data_dependent", batch_size=3)
    assert s.device_used == "cpu" and "meta" in s.meta_error
    assert s.forward_error is None and s.output_shape == [3, 5]
    assert_counts_match(s, user_spec(user_models, "make_data_dependent"), user_models[1])


def test_meta_build_failure_falls_back_to_cpu(user_models):
    s = summarize_user(user_models, "make_numpy_in_init", batch_size=2)
    assert s.device_used == "cpu" and "numpy" in s.meta_error
    assert s.output_shape == [2, 5] and s.params_total == 55


def test_factory_that_picks_the_cpu_itself(user_models):
    s = summarize_user(user_models, "make_on_cpu", batch_size=2)
    assert s.device_used == "cpu" and "cpu" in s.meta_error and s.output_shape == [2, 5]


def test_no_input_shape_skips_the_forward_pass(user_models):
    s = summarize_user(user_models, "make_frozen", shape=None)
    assert s.input_shape is None and s.output_shape is None and s.forward_error is None
    assert all(info.output_shape is None and info.calls == 0 for info in s.layers)
    assert s.memory.activations is None and s.params_total == 499 and s.device_used == "meta"
    assert s.to_json()["forward"]["input_shape"] is None
    with pytest.raises(InvalidRequest, match="no example input shape"):
        summary.check_forward(user_spec(user_models, "make_frozen", None), import_root=user_models[1])


def test_bad_requests_and_trust(user_models):
    spec = specs.resolve("builtin:linear")
    with pytest.raises(InvalidRequest, match="unknown optimizer"):
        summary.summarize(spec, optimizer="lion")
    with pytest.raises(InvalidRequest, match="batch size"):
        summary.summarize(spec, batch_size=0)
    with pytest.raises(UnsafeFile, match="--trust"):
        summarize_user(user_models, "make_frozen", trust=False)
    assert summary.summarize(spec, trust=False).params_total == 220  # built-ins are trusted
    with pytest.raises(InvalidRequest, match="cannot import"):
        summary.summarize(ModelSpec(spec="no_such_module_xyz:make", input_shape=(10,)))


# -- memory --------------------------------------------------------------------------------------------
def test_memory_estimate_arithmetic():
    spec = specs.resolve("builtin:linear")
    s = summary.summarize(spec, batch_size=4, optimizer="adam")
    m = s.memory
    assert (m.weights, m.buffers, m.gradients, m.optimizer_state) == (880, 0, 880, 2 * 880)
    assert m.activations == 4 * 10 * 4 + 4 * 20 * 4  # the input batch and the output
    assert m.total == 880 + 880 + 2 * 880 + 480
    assert summary.summarize(spec, batch_size=4, optimizer="adamw").memory.total == m.total
    sgd = summary.summarize(spec, batch_size=4, optimizer="sgd").memory
    assert sgd.optimizer_state == 0 and sgd.total == 880 + 880 + 480
    assert summary.summarize(spec, batch_size=4, optimizer="sgd", momentum=0.9).memory.optimizer_state == 880
    big = summary.summarize(spec, batch_size=64).memory
    assert big.activations == 16 * m.activations  # activations scale with the batch
    assert s.to_json()["memory"]["total"] == m.total


def test_activations_count_each_tensor_once(user_models):
    """A Sequential returns its last layer's tensor and an in-place ReLU its input: once each."""
    s = summarize_user(user_models, "make_nested", batch_size=4)
    f = 4  # bytes
    b = 4
    per_block = b * 24 * f + b * 24 * f + b * 12 * f + b * 12 * f  # ff.0, gelu, ff.2, norm
    expected = b * 10 * f + b * 12 * f + 3 * per_block + b * 2 * f  # input, stem.0 (= its ReLU), blocks, out
    assert s.memory.activations == expected


# -- the meta device, really -----------------------------------------------------------------------------
def test_large_model_on_meta_is_fast(user_models):
    summary.warm_up()
    t0 = time.perf_counter()
    s = summarize_user(user_models, "make_huge", shape=(10_000,), batch_size=8)
    elapsed = time.perf_counter() - t0
    assert s.device_used == "meta" and s.forward_error is None
    assert s.params_total == 10_000 * 5_000 + 5_000 and s.output_shape == [8, 5000]
    assert s.sizes["params"]["fp32"] == 4 * s.params_total
    assert elapsed < 1.0, elapsed  # building it for real takes longer than this on its own


def test_large_model_summary_allocates_nothing(user_models):
    """In a fresh process: peak RSS barely moves while a 200 MB model is summarized."""
    name, root = user_models
    code = textwrap.dedent(f"""
        import json, resource, sys
        import torch
        from torchdeck.models import summary
        from torchdeck.models.specs import ModelSpec
        summary.warm_up()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s = summary.summarize(ModelSpec(spec="{name}:make_huge", input_shape=(10000,)), import_root={str(root)!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"growth_kib": after - before, "device": s.device_used, "params": s.params_total}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert d["device"] == "meta" and d["params"] == 50_005_000
    assert d["growth_kib"] < 50 * 1024, d  # the weights alone would be 195 MiB


def test_summarize_model_already_built():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
    model.eval()
    s = summary.summarize_model(model, torch.zeros(5, 3), optimizer="sgd")
    assert s.spec is None and s.device_used == "cpu" and s.output_shape == [5, 4]
    assert s.params_total == 16 and s.memory.optimizer_state == 0
    assert not model.training  # its mode is left as it was
    assert json.loads(json.dumps(s.to_json()))["spec"] is None


def test_helpers_format():
    assert summary.format_shape([4, 20]) == "[4, 20]"
    assert summary.format_shape({"logits": [1, 2], "aux": "NoneType"}) == "{logits: [1, 2], aux: NoneType}"
    assert summary.format_shape(None) == ""
    assert summary.human_bytes(880) == "880 B" and summary.human_bytes(3 * 2**20) == "3.0 MiB"


def test_importing_summary_does_not_import_torch():
    code = "import json, sys; import torchdeck.models.summary; print(json.dumps('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is False
