"""Refined-gate variants (issue 12): start-as-vanilla, bounded short connection, forget-gate bias,
the identity path (input maps), their checkpoint keys and the vanilla -> refined transfer.

Every variant gets what the first implementation has in tests/test_nn.py: a float64 gradcheck of the
fast and the eager path, and the fast path pinned to the eager one. Nothing here depends on the CPU's
float kernels: comparisons use tolerances, and no test asserts the outcome of a training run.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from imagegen import render_word
from test_nn import _gradcheck, _grads
from textrec.charset import Charset
from textrec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from textrec.data.images import Preprocess
from textrec.errors import CheckpointError
from textrec.model import CRNN, CRNNConfig
from textrec.nn import GatedRNN, recording_gates
from textrec.transfer import transfer_weights

MODES = ["lstm", "gru", "mgu"]
TOL = dict(atol=1e-5, rtol=1e-5)
TINY = dict(channels=(8, 16, 16, 16, 32, 32, 32), hidden_size=16)
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "default.safetensors"

# name -> GatedRNN keyword arguments (besides mode and sizes)
VARIANTS = {
    "add-vanilla": dict(refine="add", refine_init="vanilla"),
    "mul-vanilla": dict(refine="mul", refine_init="vanilla"),
    "add-tanh": dict(refine="add", refine_bound="tanh"),
    "mul-tanh": dict(refine="mul", refine_bound="tanh"),
    "mul-vanilla-tanh": dict(refine="mul", refine_init="vanilla", refine_bound="tanh"),
    "add-map": dict(refine="add", input_map=True),
    "mul-map": dict(refine="mul", input_map=True),
    "none-map-forget": dict(refine="none", input_map=True, forget_bias=1.0),
    # low-rank projections (refine_rank): x̃ = W_up W_down x
    "add-vanilla-tanh-rank2": dict(refine="add", refine_init="vanilla", refine_bound="tanh", refine_rank=2),
    "mul-vanilla-rank2": dict(refine="mul", refine_init="vanilla", refine_rank=2),
    "add-rank1": dict(refine="add", refine_rank=1),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _assert_close_to_scale(a, b, rel=1e-10):
    """|a - b| within `rel` of b's largest magnitude: refined gates outside (0, 1) (MGU, GRU) can grow the
    state geometrically, and float64 rounding grows with it."""
    scale = max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, atol=rel * scale, rtol=0)


def _wake_projections(rnn: GatedRNN, scale: float = 0.5) -> GatedRNN:
    """A start-as-vanilla projection is zero, which would hide its terms from a check; randomise it."""
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight_refine"):
                p.copy_(scale * torch.randn_like(p))
    return rnn


# ---------------------------------------------------------------- gradcheck (float64)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_variants(mode, variant, fast):
    # input 2 != hidden 3: layer 0 projects (or maps), layer 1 (input 2H) too
    rnn = GatedRNN(mode, 2, 3, num_layers=2 if fast else 1, bidirectional=True, **VARIANTS[variant])
    rnn.fast = fast
    _gradcheck(_wake_projections(rnn))


@pytest.mark.parametrize("refine", ["add", "mul"])
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_bounded_identity(mode, refine):
    """Equal widths and no projection: x̃ = tanh(x_t), its gradient reaching the input directly."""
    rnn = GatedRNN(mode, 3, 3, num_layers=1, bidirectional=True, refine=refine, refine_bound="tanh")
    assert not hasattr(rnn, "weight_refine_l0")
    _gradcheck(rnn)


@pytest.mark.parametrize(
    "mode,gates,kwargs",
    [
        ("lstm", ("i", "o"), dict(refine="mul", refine_init="vanilla")),
        ("lstm", ("i", "o"), dict(refine="add", refine_init="vanilla", refine_bound="tanh")),
        ("lstm", ("f",), dict(refine="mul", refine_bound="tanh")),
        ("gru", ("z",), dict(refine="mul", refine_init="vanilla", refine_bound="tanh")),
    ],
)
def test_gradcheck_variant_gate_subsets(mode, gates, kwargs):
    rnn = GatedRNN(mode, 3, 3, num_layers=1, refine_gates=gates, **kwargs)
    _gradcheck(_wake_projections(rnn))


# ---------------------------------------------------------------- fast path vs eager


@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
def test_fast_matches_eager_variants(mode, variant, grad):
    _assert_fast_matches_eager(mode, VARIANTS[variant], grad)


# Gate subsets: the fast path combines only the refined blocks (a strided view for LSTM i, o and f, o; the
# span for i, f, o) and reads the other gates from their sigmoids; recorded gate values included.
SUBSETS = [
    ("lstm", ("i", "o")), ("lstm", ("f", "o")), ("lstm", ("i", "f", "o")), ("lstm", ("f",)), ("lstm", ("o",)),
    ("gru", ("z",)), ("gru", ("r",)),
]


@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("kwargs", [dict(refine="add", refine_init="vanilla", refine_bound="tanh"),
                                    dict(refine="mul", refine_init="vanilla"), dict(refine="mul", refine_bound="tanh")],
                         ids=["add-vstart-tanh", "mul-vstart", "mul-tanh"])
@pytest.mark.parametrize("mode,gates", SUBSETS, ids=[f"{m}-{''.join(g)}" for m, g in SUBSETS])
def test_fast_matches_eager_gate_subsets(mode, gates, kwargs, grad):
    _assert_fast_matches_eager(mode, dict(kwargs, refine_gates=gates), grad)


def _assert_fast_matches_eager(mode, kwargs, grad):
    rnn = GatedRNN(mode, 5, 4, num_layers=2, bidirectional=True, batch_first=True, **kwargs).double()
    _wake_projections(rnn, 0.3)
    x = torch.randn(3, 7, 5, dtype=torch.double, requires_grad=grad)
    h0 = torch.randn(4, 3, 4, dtype=torch.double)
    state = (h0, torch.randn(4, 3, 4, dtype=torch.double)) if mode == "lstm" else h0
    results = []
    for fast in (True, False):
        rnn.fast = fast
        with torch.set_grad_enabled(grad), recording_gates(rnn) as recorded:
            out, st = rnn(x, state)
        flat = [out, *(st if mode == "lstm" else (st,))]
        flat += [t for v in recorded[""].values() for t in v] + list(rnn.last_states.values())
        if grad:
            loss = sum((t * torch.randn_like(t, generator=torch.Generator().manual_seed(i))).sum() for i, t in enumerate(flat[:3]))
            flat += list(_grads(rnn, x, loss))
        results.append(flat)
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        _assert_close_to_scale(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_inference_one_direction_at_a_time_variants(mode, monkeypatch):
    from textrec.nn import fused

    monkeypatch.setattr(fused, "_SPLIT_BYTES", 0)
    rnn = GatedRNN(mode, 5, 4, num_layers=2, bidirectional=True, refine="mul", refine_init="vanilla", refine_bound="tanh")
    rnn = _wake_projections(rnn.double()).eval()
    x = torch.randn(6, 3, 5, dtype=torch.double)
    results = []
    for fast in (True, False):
        rnn.fast = fast
        with torch.no_grad(), recording_gates(rnn):
            out, _ = rnn(x)
        results.append([out, *[t for v in rnn.last_gates.values() for t in v], *rnn.last_states.values()])
    for a, b in zip(*results):
        _assert_close_to_scale(a, b)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("mode", MODES)
def test_recorded_states_end_in_the_final_state(mode, fast):
    rnn = GatedRNN(mode, 5, 4, num_layers=2, bidirectional=True, refine="add", refine_gates=None)
    rnn.fast = fast
    with recording_gates(rnn):
        _, st = rnn(torch.randn(6, 3, 5))
    final = st[1] if mode == "lstm" else st  # c for the LSTM, h otherwise
    for layer in range(2):
        states = rnn.last_states[f"l{layer}"]
        assert states.shape == (2, 6, 3, 4)
        torch.testing.assert_close(states[0, -1], final[2 * layer])  # forward direction ends at T - 1
        torch.testing.assert_close(states[1, 0], final[2 * layer + 1])  # reverse direction ends at 0


# ---------------------------------------------------------------- start as vanilla


def _vanilla_and_refined(mode, input_size, hidden, layers, **refined_kwargs):
    torch.manual_seed(1)
    vanilla = GatedRNN(mode, input_size, hidden, num_layers=layers, bidirectional=True)
    refined = GatedRNN(mode, input_size, hidden, num_layers=layers, bidirectional=True, **refined_kwargs)
    missing, unexpected = refined.load_state_dict(vanilla.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("weight_refine") for k in missing)
    return vanilla, refined


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("gates", [None, "subset"])
@pytest.mark.parametrize("bound", ["none", "tanh"])
@pytest.mark.parametrize("refine", ["add", "mul"])
@pytest.mark.parametrize("mode", MODES)
def test_start_as_vanilla_equals_vanilla_at_init(mode, refine, bound, gates, fast):
    subset = {"lstm": ("i", "o"), "gru": ("z",), "mgu": ("f",)}[mode] if gates else None
    # 6 -> 5 projects; layer 1 (10 -> 5) too; equal widths are covered below
    vanilla, refined = _vanilla_and_refined(
        mode, 6, 5, 2, refine=refine, refine_gates=subset, refine_init="vanilla", refine_bound=bound
    )
    refined.fast = vanilla.fast = fast
    x = 3 * torch.randn(7, 4, 6)
    out_v, st_v = vanilla(x)
    out_r, st_r = refined(x)
    torch.testing.assert_close(out_r, out_v, **TOL)
    for a, b in zip(st_r if mode == "lstm" else (st_r,), st_v if mode == "lstm" else (st_v,)):
        torch.testing.assert_close(a, b, **TOL)
    # ... and the short connection can grow: its projections get a gradient at once
    out_r.pow(2).sum().backward()
    assert all(p.grad.abs().sum() > 0 for n, p in refined.named_parameters() if n.startswith("weight_refine"))


@pytest.mark.parametrize("refine", ["add", "mul"])
def test_start_as_vanilla_projects_at_equal_widths(refine):
    """The identity x̃ (equal widths) is never zero, so start-as-vanilla gives those layers a zero projection too."""
    vanilla, refined = _vanilla_and_refined("lstm", 4, 4, 1, refine=refine, refine_init="vanilla")
    assert refined.weight_refine_l0.shape == (4, 4) and not refined.weight_refine_l0.any()
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(refined(x)[0], vanilla(x)[0], **TOL)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_from_torch_start_as_vanilla_matches_torch(kind):
    ref = kind(6, 5, num_layers=2, bidirectional=True)
    ours = GatedRNN.from_torch(ref, refine="mul", refine_gates=None, refine_init="vanilla", refine_bound="tanh")
    x = torch.randn(7, 3, 6)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL)


def test_start_as_vanilla_draws_the_same_weights():
    """Zeroing comes after torch's draws: same seed, same recurrent weights as the default refinement."""
    torch.manual_seed(3)
    default = GatedRNN("lstm", 6, 5, 2, True, refine="add")
    torch.manual_seed(3)
    vanilla = GatedRNN("lstm", 6, 5, 2, True, refine="add", refine_init="vanilla")
    for name, p in default.named_parameters():
        q = getattr(vanilla, name)
        if name.startswith("weight_refine"):
            assert not q.any() and p.any()
        else:
            assert torch.equal(p, q), name


# ---------------------------------------------------------------- bounded short connection


@pytest.mark.parametrize("refine", ["add", "mul"])
def test_bounded_short_connection_stays_inside_unit_interval(refine):
    kwargs = dict(num_layers=2, bidirectional=True, refine=refine)
    free = GatedRNN("lstm", 6, 5, **kwargs)
    bounded = GatedRNN("lstm", 6, 5, refine_bound="tanh", **kwargs)
    bounded.load_state_dict(free.state_dict())
    for rnn in (free, bounded):
        _wake_projections(rnn, scale=3.0)  # large weights: an unbounded x̃ leaves (-1, 1)
    bounded.load_state_dict(free.state_dict())
    x = 5 * torch.randn(8, 4, 6)
    spans = []
    for rnn in (free, bounded):
        with torch.no_grad(), recording_gates(rnn) as rec:
            rnn(x)
        xt = [val - sig if refine == "add" else val / sig for sig, val in rec[""].values()]
        spans.append(max(t.abs().max().item() for t in xt))
    assert spans[0] > 1.5  # the check can fail
    assert spans[1] <= 1.0  # tanh's open interval, closed by float rounding at large arguments


def test_start_as_vanilla_mul_factor_is_one_plus_bounded_projection():
    rnn = _wake_projections(GatedRNN("gru", 4, 3, refine="mul", refine_init="vanilla", refine_bound="tanh"), 4.0)
    x = 3 * torch.randn(5, 2, 4)
    with torch.no_grad(), recording_gates(rnn) as rec:
        rnn(x)
    expected = 1 + torch.tanh(nn.functional.linear(x, rnn.weight_refine_l0))
    for sig, val in rec[""].values():
        torch.testing.assert_close(val[0] / sig[0], expected, **TOL)
        assert (val[0] / sig[0]).min() >= 0 and (val[0] / sig[0]).max() <= 2


# ---------------------------------------------------------------- forget-gate bias


@pytest.mark.parametrize("mode,block,sign", [("lstm", 1, 1.0), ("gru", 1, 1.0), ("mgu", 0, -1.0)])
def test_forget_bias_sets_the_memory_gate_rows_only(mode, block, sign):
    torch.manual_seed(5)
    plain = GatedRNN(mode, 6, 4, num_layers=2, bidirectional=True, refine="add")
    torch.manual_seed(5)
    biased = GatedRNN(mode, 6, 4, num_layers=2, bidirectional=True, refine="add", forget_bias=1.0)
    rows = slice(block * 4, (block + 1) * 4)
    for name, p in biased.named_parameters():
        q = getattr(plain, name)
        if name.startswith("bias_"):
            expected = sign * 1.0 if name.startswith("bias_ih") else 0.0
            assert torch.equal(p[rows], torch.full_like(p[rows], expected)), name
            mask = torch.ones_like(p, dtype=torch.bool)
            mask[rows] = False
            assert torch.equal(p[mask], q[mask]), name
        else:
            assert torch.equal(p, q), name


def test_forget_bias_zero_is_todays_initialisation():
    torch.manual_seed(2)
    today = GatedRNN("lstm", 6, 4, 2, True, refine="add", refine_gates=("i", "o"))
    torch.manual_seed(2)
    explicit = GatedRNN(
        "lstm", 6, 4, 2, True, refine="add", refine_gates=("i", "o"), refine_init="default", refine_bound="none", forget_bias=0.0
    )
    assert today.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(v, explicit.state_dict()[k]) for k, v in today.state_dict().items())


# ---------------------------------------------------------------- identity path (input maps)


def test_input_map_makes_every_layer_input_hidden_wide():
    rnn = GatedRNN("lstm", 6, 4, num_layers=2, bidirectional=True, refine="add", input_map=True)
    shapes = {n: tuple(p.shape) for n, p in rnn.named_parameters()}
    assert shapes["weight_map_l0"] == (4, 6) and shapes["bias_map_l0"] == (4,)
    assert shapes["weight_map_l1"] == (4, 8)
    assert shapes["weight_ih_l0"] == shapes["weight_ih_l1_reverse"] == (16, 4)
    assert not any(n.startswith("weight_refine") for n in shapes)  # x̃ is the mapped input itself
    # a layer whose input is hidden-wide already needs no map
    assert not hasattr(GatedRNN("lstm", 4, 4, num_layers=2, input_map=True), "weight_map_l0")
    assert not hasattr(GatedRNN("lstm", 4, 4, num_layers=2, input_map=True), "weight_map_l1")


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
def test_input_map_short_connection_is_the_mapped_input(fast):
    rnn = GatedRNN("lstm", 6, 4, num_layers=1, bidirectional=True, refine="add", input_map=True)
    rnn.fast = fast
    x = torch.randn(5, 2, 6)
    with torch.no_grad(), recording_gates(rnn) as rec:
        rnn(x)
    mapped = nn.functional.linear(x, rnn.weight_map_l0, rnn.bias_map_l0)
    for sig, val in rec[""].values():
        for d in range(2):
            torch.testing.assert_close(val[d] - sig[d], mapped, **TOL)


def test_crnn_identity_path():
    config = CRNNConfig(num_classes=37, refine="add", refine_gates=("i", "o"), input_map=True, **TINY)
    model = CRNN(config)
    seq = model.sequence
    assert seq.weight_map_l0.shape == (16, 32) and seq.weight_map_l1.shape == (16, 32)
    assert not any("weight_refine" in n for n, _ in model.named_parameters())
    assert model(torch.randn(2, 1, 32, 64)).shape == (17, 2, 37)


# ---------------------------------------------------------------- option checks


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(refine="add", refine_init="zero"), "unknown refine_init 'zero'"),
        (dict(refine="add", refine_bound="clip"), "unknown refine_bound 'clip'"),
        (dict(refine="none", refine_init="vanilla"), "refine_init='vanilla' needs refine"),
        (dict(refine="none", refine_bound="tanh"), "refine_bound='tanh' needs refine"),
        (dict(refine="add", refine_init="vanilla", input_map=True), "cannot be combined with input_map"),
        (dict(forget_bias=float("nan")), "forget_bias must be a finite number"),
        (dict(forget_bias="1"), "forget_bias must be a finite number"),
        (dict(refine_rank=2), "refine_rank=2 needs refine"),
        (dict(refine="add", refine_rank=4), "refine_rank=4 saves nothing: it must be below hidden_size=4"),
        (dict(refine="add", refine_rank=-1), "refine_rank must be a non-negative integer"),
        (dict(refine="add", refine_rank=True), "refine_rank must be a non-negative integer"),
        (dict(refine="add", refine_rank=2, input_map=True), "refine_rank cannot be combined with input_map"),
    ],
)
def test_invalid_variant_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedRNN("lstm", 6, 4, **kwargs)


# ---------------------------------------------------------------- checkpoints


NEW_KEYS = {"refine_init", "refine_bound", "forget_bias", "input_map", "refine_rank"}


def _save(path, config: CRNNConfig, charset: Charset, model=None):
    model = model or CRNN(config)
    save_checkpoint(path, Checkpoint(config, charset, Preprocess(), model.state_dict(), {"step": 1}))
    return model


@pytest.mark.parametrize(
    "variant",
    [
        dict(refine="mul", refine_gates=("i", "o"), refine_init="vanilla", refine_bound="tanh", forget_bias=1.0),
        dict(refine="add", input_map=True, forget_bias=-0.5),
        dict(refine="add", refine_gates=("i", "o"), refine_init="vanilla", refine_bound="tanh", refine_rank=3),
    ],
)
def test_checkpoint_round_trip_of_variant_keys(tmp_path, variant):
    charset = Charset.from_spec("36")
    config = CRNNConfig(num_classes=charset.num_classes, **TINY, **variant)
    model = _save(tmp_path / "m.safetensors", config, charset).eval()
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.model_config == config
    rebuilt = loaded.build_model().eval()
    images = torch.randn(2, 1, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), model(images), atol=0, rtol=0)


def test_checkpoint_without_variant_keys_loads_as_before(tmp_path):
    """A checkpoint written before the keys existed (and any default one now: the keys are left out)."""
    charset = Charset.from_spec("36")
    config = CRNNConfig(num_classes=charset.num_classes, refine="add", refine_gates=("i", "o"), **TINY)
    assert NEW_KEYS.isdisjoint(config.to_dict())  # older textrec versions refuse unknown keys
    model = _save(tmp_path / "old.safetensors", config, charset)
    raw = (tmp_path / "old.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert NEW_KEYS.isdisjoint(json.loads(header["__metadata__"]["model"]))
    loaded = load_checkpoint(tmp_path / "old.safetensors")
    assert (loaded.model_config.refine_init, loaded.model_config.refine_bound) == ("default", "none")
    assert (loaded.model_config.forget_bias, loaded.model_config.input_map) == (0.0, False)
    assert loaded.build_model().state_dict().keys() == model.state_dict().keys()


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped model in this checkout")
def test_shipped_model_has_the_refined_layer_of_its_recipe():
    """Issue 12: the shipped recurrent layer is refined (add on i, o, tanh-bounded; started as vanilla in lease 3;
    rank-16 projections since 2026-11-28), as the recipe the next lease continues it with."""
    config = load_checkpoint(SHIPPED).model_config
    assert (config.refine, config.refine_gates, config.refine_init, config.refine_bound, config.forget_bias, config.input_map,
            config.refine_rank) == ("add", ("i", "o"), "vanilla", "tanh", 0.0, False, 16)
    recipe = tomllib.loads((SHIPPED.parent / "model2.toml").read_text(encoding="utf-8"))
    assert (recipe["refine"], recipe["refine_gates"], recipe["refine_bound"], recipe["refine_rank"]) == ("add", "i,o", "tanh", 16)


# ---------------------------------------------------------------- transfer: vanilla -> refined start-as-vanilla


def _logits(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize(
    "variant",
    [
        dict(refine="add", refine_gates=("i", "o")),
        dict(refine="add"),
        dict(refine="mul", refine_bound="tanh"),
        dict(refine="mul", refine_gates=("i", "f", "o")),
    ],
)
def test_transfer_vanilla_to_start_as_vanilla_keeps_outputs(tmp_path, variant):
    charset = Charset.from_spec("36")
    torch.manual_seed(0)
    vanilla = _save(tmp_path / "v.safetensors", CRNNConfig(num_classes=charset.num_classes, **TINY), charset)
    torch.manual_seed(1)  # other fresh weights, so that a copy that did not happen would show
    refined = CRNN(CRNNConfig(num_classes=charset.num_classes, refine_init="vanilla", **TINY, **variant))
    report = transfer_weights(refined, charset, load_checkpoint(tmp_path / "v.safetensors"))
    assert report.fresh == sorted(n for n in refined.state_dict() if "weight_refine" in n) and len(report.fresh) == 4
    for name, tensor in refined.state_dict().items():
        if name in report.fresh:
            assert not tensor.any(), name
        else:
            assert torch.equal(tensor, vanilla.state_dict()[name]), name
    images = torch.randn(3, 1, 32, 64)
    torch.testing.assert_close(_logits(refined, images), _logits(vanilla, images), **TOL)


def test_transfer_to_a_refined_model_needs_start_as_vanilla(tmp_path):
    charset = Charset.from_spec("36")
    _save(tmp_path / "v.safetensors", CRNNConfig(num_classes=charset.num_classes, **TINY), charset)
    checkpoint = load_checkpoint(tmp_path / "v.safetensors")
    refined = CRNN(CRNNConfig(num_classes=charset.num_classes, refine="add", refine_gates=("i", "o"), **TINY))
    with pytest.raises(CheckpointError, match="refine: 'none' -> 'add'.*only with refine_init='vanilla'"):
        transfer_weights(refined, charset, checkpoint)
    # the identity path changes the recurrent weights' shapes: no start from vanilla weights
    mapped = CRNN(CRNNConfig(num_classes=charset.num_classes, refine="add", input_map=True, **TINY))
    with pytest.raises(CheckpointError, match="input_map: False -> True"):
        transfer_weights(mapped, charset, checkpoint)
    # a forget-gate bias is an initialisation that the copied biases would contradict
    biased = CRNN(CRNNConfig(num_classes=charset.num_classes, refine="add", refine_init="vanilla", forget_bias=1.0, **TINY))
    with pytest.raises(CheckpointError, match="forget_bias: 0.0 -> 1.0"):
        transfer_weights(biased, charset, checkpoint)
    # and a refined source does not become vanilla again
    _save(tmp_path / "r.safetensors", refined.config, charset)
    with pytest.raises(CheckpointError, match="refine: 'add' -> 'none'"):
        transfer_weights(CRNN(CRNNConfig(num_classes=charset.num_classes, **TINY)), charset, load_checkpoint(tmp_path / "r.safetensors"))


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped model in this checkout")
def test_shipped_model_starts_a_refined_model_unchanged(tmp_path):
    """Lease 3's transfer at the shipped architecture: the shipped weights without their projections, saved as a
    vanilla checkpoint, start the shipped refined layer (projections at zero) with unchanged outputs."""
    import dataclasses

    from textrec.checkpoint import Checkpoint, save_checkpoint

    shipped = load_checkpoint(SHIPPED)
    plain = dataclasses.replace(shipped.model_config, refine="none", refine_gates=None, refine_init="default", refine_bound="none",
                                refine_rank=0)
    weights = {k: v for k, v in shipped.state_dict.items() if not k.startswith("sequence.weight_refine")}
    save_checkpoint(tmp_path / "vanilla.safetensors", Checkpoint(plain, shipped.charset, shipped.preprocess, weights))
    checkpoint = load_checkpoint(tmp_path / "vanilla.safetensors")
    vanilla = checkpoint.build_model()
    refined = CRNN(shipped.model_config)
    report = transfer_weights(refined, checkpoint.charset, checkpoint)
    assert len(report.fresh) == 8  # the four rank-16 projections: W_up at zero, W_down fresh
    from textrec.predict import Recognizer

    images = Recognizer(vanilla, checkpoint.charset, checkpoint.preprocess).prepare(
        [render_word(w) for w in ("street", "Coffee", "$4.99")]
    )
    torch.testing.assert_close(_logits(refined, images), _logits(vanilla, images), **TOL)


# ---------------------------------------------------------------- training job and CLI


def test_train_from_vanilla_checkpoint_with_start_as_vanilla_and_resume_guard(tmp_path, word_lmdb):
    from test_train import Recorder
    from textrec.train import TrainConfig, train

    data, _ = word_lmdb
    charset = Charset.from_spec("36")
    _save(tmp_path / "v.safetensors", CRNNConfig(num_classes=charset.num_classes, **TINY), charset)
    config = TrainConfig(
        train_data=[str(data)], val_data=[str(data)], output=str(tmp_path / "run"), max_steps=2, batch_size=3,
        warmup_steps=1, augment=False, val_interval=2, save_interval=2, workers=0, width=64,
        refine="add", refine_gates=["i", "o"], refine_init="vanilla", refine_bound="tanh",
        init_from=str(tmp_path / "v.safetensors"), **TINY,
    )
    recorder = Recorder()
    train(config, recorder)
    assert any("refined gates start as vanilla (4 projections start at zero)" in e for e in recorder.events)
    saved = load_checkpoint(tmp_path / "run" / "last.safetensors").model_config
    assert (saved.refine, saved.refine_init, saved.refine_bound) == ("add", "vanilla", "tanh")
    config.max_steps, config.refine_bound = 4, "none"
    with pytest.raises(CheckpointError, match="refine_bound: 'tanh' -> 'none'"):
        train(config)


def test_refine_lr_scale_slows_the_projections_only(tmp_path, word_lmdb):
    from textrec.errors import ConfigError
    from textrec.train import TrainConfig, load_state, train

    data, _ = word_lmdb
    charset = Charset.from_spec("36")
    _save(tmp_path / "v.safetensors", CRNNConfig(num_classes=charset.num_classes, **TINY), charset)

    def run(name: str, scale: float, steps: int = 2, **extra) -> TrainConfig:
        config = TrainConfig(
            train_data=[str(data)], val_data=[], output=str(tmp_path / name), max_steps=steps, batch_size=3,
            warmup_steps=1, augment=False, save_interval=2, workers=0, width=64, lr=1e-3, refine="add",
            refine_gates=["i", "o"], refine_init="vanilla", refine_bound="tanh", refine_lr_scale=scale,
            init_from=str(tmp_path / "v.safetensors"), **TINY, **extra,
        )
        train(config)
        return config

    run("full", 1.0)
    run("slow", 0.1)
    groups = load_state(tmp_path / "slow" / "resume.pt")["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-3, 1e-3, 1e-4])
    moved = {}
    for name in ("full", "slow"):
        weights = load_checkpoint(tmp_path / name / "last.safetensors").state_dict
        moved[name] = max(float(v.abs().max()) for k, v in weights.items() if "weight_refine" in k)
    # Adam moves a zero-initialised weight by about lr per step: a tenth of the rate, about a tenth of the way.
    assert 0.05 < moved["slow"] / moved["full"] < 0.2, moved
    # Changed on resume (accepted), the new rate reaches the optimizer and the schedule.
    run("slow", 0.5, steps=3, accept_changes=True)
    state = load_state(tmp_path / "slow" / "resume.pt")
    assert [g["initial_lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([1e-3, 1e-3, 5e-4])
    assert state["scheduler"]["base_lrs"] == pytest.approx([1e-3, 1e-3, 5e-4])
    with pytest.raises(ConfigError, match="--refine-lr-scale must be a finite number above 0"):
        run("bad", 0.0)
    # A refined run saved by a version with two groups (projections among the other weights) is refused clearly.
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:2]
    torch.save(state, tmp_path / "slow" / "resume.pt")
    with pytest.raises(CheckpointError, match="holds 2 parameter groups where this version uses 3; start a new --output"):
        run("slow", 0.5, steps=4)


def test_cli_variant_options_reach_the_checkpoint(tmp_path, word_lmdb):
    from cli.main import app

    data, _ = word_lmdb
    runner = CliRunner(env={"COLUMNS": "250"})
    common = ["train", "--train-data", str(data), "--max-steps", "1", "--batch-size", "3", "--workers", "0",
              "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", str(TINY["hidden_size"])]
    result = runner.invoke(app, [*common, "--output", str(tmp_path / "a"), "--refine", "mul", "--refine-gates", "i,o",
                                 "--refine-init", "vanilla", "--refine-bound", "tanh", "--forget-bias", "1",
                                 "--refine-lr-scale", "0.1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["refine_lr_scale"] == 0.1
    assert (saved["refine_init"], saved["refine_bound"], saved["forget_bias"], saved["input_map"]) == ("vanilla", "tanh", 1.0, False)
    config = load_checkpoint(tmp_path / "a" / "last.safetensors").model_config
    assert (config.refine_init, config.refine_bound, config.forget_bias) == ("vanilla", "tanh", 1.0)
    result = runner.invoke(app, [*common, "--output", str(tmp_path / "b"), "--refine", "add", "--input-map"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "b" / "last.safetensors").model_config.input_map is True
    result = runner.invoke(app, [*common, "--output", str(tmp_path / "c"), "--refine", "add", "--input-map",
                                 "--refine-init", "vanilla"])
    assert result.exit_code == 1 and "cannot be combined with input_map" in result.output


# ---------------------------------------------------------------- low-rank projections (refine_rank)


def test_low_rank_projection_shapes_and_cost():
    """Rank r: W_down (r, input) and W_up (hidden, r) in place of one (hidden, input) matrix, per layer and direction."""
    rnn = GatedRNN("lstm", 512, 256, num_layers=2, bidirectional=True, refine="add", refine_gates=("i", "o"), refine_rank=16)
    shapes = {n: tuple(p.shape) for n, p in rnn.named_parameters() if n.startswith("weight_refine")}
    for sfx in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert shapes.pop(f"weight_refine_down{sfx}") == (16, 512)
        assert shapes.pop(f"weight_refine{sfx}") == (256, 16)
    assert not shapes
    full = GatedRNN("lstm", 512, 256, num_layers=2, bidirectional=True, refine="add", refine_gates=("i", "o"))
    count = lambda m: sum(p.numel() for p in m.short_connection_weights())  # noqa: E731
    assert count(full) == 4 * 256 * 512 and count(rnn) == 4 * 16 * (512 + 256)
    assert "refine_rank=16" in repr(rnn)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("mode", MODES)
def test_low_rank_start_as_vanilla_zeroes_the_up_map_only(mode, fast):
    """W_up starts at zero (so the layer computes its vanilla twin) and W_down does not: a first step moves W_up."""
    vanilla, refined = _vanilla_and_refined(mode, 6, 5, 2, refine="add", refine_init="vanilla", refine_rank=2)
    refined.fast = vanilla.fast = fast
    for name, p in refined.named_parameters():
        if name.startswith("weight_refine_down"):
            assert p.abs().min() > 0, name
        elif name.startswith("weight_refine"):
            assert not p.any(), name
    x = torch.randn(7, 3, 6)
    torch.testing.assert_close(refined(x)[0], vanilla(x)[0], **TOL)
    refined(x)[0].square().sum().backward()
    for name, p in refined.named_parameters():
        if name.startswith("weight_refine"):
            assert (p.grad.abs().max() > 0) == ("_down" not in name), name  # W_up = 0 passes nothing to W_down yet


def test_low_rank_equals_its_full_product():
    """x̃ = W_up (W_down x) is the full projection W_up W_down: the same layer, up to rounding."""
    low = GatedRNN("lstm", 6, 5, num_layers=2, bidirectional=True, refine="add", refine_bound="tanh", refine_rank=2).double()
    full = GatedRNN("lstm", 6, 5, num_layers=2, bidirectional=True, refine="add", refine_bound="tanh").double()
    with torch.no_grad():
        for name, p in full.named_parameters():
            own = getattr(low, name)
            if name.startswith("weight_refine"):
                p.copy_(own @ getattr(low, name.replace("weight_refine", "weight_refine_down")))
            else:
                p.copy_(own)
    x = torch.randn(4, 3, 6, dtype=torch.double)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            _assert_close_to_scale(low(x)[0], full(x)[0])


def _refined_config(charset, **kwargs):
    return CRNNConfig(num_classes=charset.num_classes, refine="add", refine_gates=("i", "o"), refine_bound="tanh",
                      **TINY, **kwargs)


def _rank_limited(model: CRNN, rank: int) -> CRNN:
    """Give every full projection of `model` a product of rank `rank`, so a factorisation at that rank is exact."""
    with torch.no_grad():
        for name, p in model.sequence.named_parameters():
            if name.startswith("weight_refine"):
                p.copy_(torch.randn(p.shape[0], rank) @ torch.randn(rank, p.shape[1]) * 0.1)
    return model


def test_transfer_full_to_low_rank_and_back(tmp_path):
    """--init-from a refined checkpoint into another rank: a truncated SVD (exact where the projections have that
    rank), and multiplied out again into full projections."""
    charset = Charset.from_spec("36")
    images = torch.randn(2, 1, 32, 64)
    full = _rank_limited(CRNN(_refined_config(charset)), 3)
    _save(tmp_path / "full.safetensors", full.config, charset, full)
    low = CRNN(_refined_config(charset, refine_rank=3))
    report = transfer_weights(low, charset, load_checkpoint(tmp_path / "full.safetensors"))
    assert report.rank == 3 and report.rank_energy == pytest.approx(1.0) and not report.fresh
    torch.testing.assert_close(_logits(low, images), _logits(full, images), atol=1e-5, rtol=1e-5)
    _save(tmp_path / "low.safetensors", low.config, charset, low)
    again = CRNN(_refined_config(charset))
    report = transfer_weights(again, charset, load_checkpoint(tmp_path / "low.safetensors"))
    assert report.rank == 0
    torch.testing.assert_close(_logits(again, images), _logits(full, images), atol=1e-5, rtol=1e-5)


def test_transfer_to_a_lower_rank_keeps_the_best_approximation(tmp_path):
    """Cutting a rank keeps the leading singular directions (Eckart-Young), and says how much energy they hold."""
    charset = Charset.from_spec("36")
    full = CRNN(_refined_config(charset))
    _save(tmp_path / "full.safetensors", full.config, charset, full)
    low = CRNN(_refined_config(charset, refine_rank=2))
    report = transfer_weights(low, charset, load_checkpoint(tmp_path / "full.safetensors"))
    kept = total = 0.0
    for name, p in full.sequence.named_parameters():
        if name.startswith("weight_refine"):
            U, S, Vh = torch.linalg.svd(p.detach().double(), full_matrices=False)
            best = (U[:, :2] * S[:2]) @ Vh[:2]
            product = getattr(low.sequence, name).double() @ getattr(low.sequence, name.replace("weight_refine", "weight_refine_down")).double()
            torch.testing.assert_close(product, best, atol=1e-6, rtol=1e-5)
            kept, total = kept + float((S[:2] ** 2).sum()), total + float((S**2).sum())
    assert 0 < report.rank_energy < 1 and report.rank_energy == pytest.approx(kept / total)


def test_transfer_vanilla_to_low_rank_start_as_vanilla(tmp_path):
    charset = Charset.from_spec("36")
    vanilla = _save(tmp_path / "v.safetensors", CRNNConfig(num_classes=charset.num_classes, **TINY), charset)
    low = CRNN(_refined_config(charset, refine_init="vanilla", refine_rank=2))
    report = transfer_weights(low, charset, load_checkpoint(tmp_path / "v.safetensors"))
    assert len(report.fresh) == 8 and report.rank is None  # W_up and W_down of 2 layers x 2 directions
    torch.testing.assert_close(_logits(low, torch.ones(1, 1, 32, 48)), _logits(vanilla, torch.ones(1, 1, 32, 48)))


def test_transfer_refuses_a_rank_change_with_other_changes(tmp_path):
    charset = Charset.from_spec("36")
    full = CRNN(_refined_config(charset))
    _save(tmp_path / "full.safetensors", full.config, charset, full)
    other = CRNN(_refined_config(charset, refine_rank=2, forget_bias=1.0))
    with pytest.raises(CheckpointError, match="architecture differs"):
        transfer_weights(other, charset, load_checkpoint(tmp_path / "full.safetensors"))


def test_ablation_variant_names_take_a_rank(monkeypatch):
    """benchmarks/refine_ablation.py (and rnn_speed.py --variants) spell a rank as r<N>."""
    from benchmark_loader import load_benchmark

    ablation = load_benchmark("refine_ablation", monkeypatch)
    values = ablation.parse_variant("add-io-vstart-tanh-r16")
    assert values["refine_rank"] == 16 and values["refine_gates"] == ["i", "o"] and values["refine_init"] == "vanilla"
    assert ablation.layer_options(values)["refine_rank"] == 16
    assert ablation.parse_variant("add-io")["refine_rank"] == 0
    with pytest.raises(ValueError, match="needs refine"):
        ablation.parse_variant("none-r4")


def test_export_refactors_projections(tmp_path):
    """`textrec export --refine-rank R`: the same model with its projections factored (exact where they have rank R)."""
    from cliutil import assert_one_clear_line, invoke

    charset = Charset.from_spec("36")
    full = _rank_limited(CRNN(_refined_config(charset)), 2)
    _save(tmp_path / "full.safetensors", full.config, charset, full)
    result = invoke("export", str(tmp_path / "full.safetensors"), str(tmp_path / "low.safetensors"), "--refine-rank", "2")
    assert result.exit_code == 0, result.output
    assert "refined projections at rank 2 (100% of their energy kept)" in result.output
    low = load_checkpoint(tmp_path / "low.safetensors")
    assert low.model_config.refine_rank == 2 and low.info["refactored"] == {"rank": 2, "energy_kept": 1.0}
    images = torch.randn(2, 1, 32, 64)
    torch.testing.assert_close(_logits(low.build_model(), images), _logits(full, images), atol=1e-5, rtol=1e-5)

    _save(tmp_path / "v.safetensors", CRNNConfig(num_classes=charset.num_classes, **TINY), charset)
    result = invoke("export", str(tmp_path / "v.safetensors"), str(tmp_path / "x.safetensors"), "--refine-rank", "2")
    assert_one_clear_line(result, "v.safetensors", "vanilla gates")
    result = invoke("export", str(tmp_path / "full.safetensors"), str(tmp_path / "y.safetensors"), "--refine-rank", "16")
    assert_one_clear_line(result, "--refine-rank 16", "below hidden_size=16")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
