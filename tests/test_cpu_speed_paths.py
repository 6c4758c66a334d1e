"""The fused path's CPU speed-ups compute the same numbers as the plain ops they replace.

* `textrec.nn.projection`: the input side's products through oneDNN (and the hand-written backward);
* `textrec.nn.fused.tanh`: tanh as 2 σ(2x) - 1, which the layers take from a few thousand elements on,
  so the small layers of the other tests never reach it: here it is forced on (and off) for every size;
* the training layout of the recurrent weights (a view of the stacked ``W_hh``, no transposing copy).

Each check runs with the oneDNN products on and off (``TEXTREC_ONEDNN=0``). Where this torch has no oneDNN
linear op (`projection.onednn_applies` is then false) the "on" cases say so and are skipped: the layers then
take torch's ``baddbmm``/``bmm``, which the "off" cases check.
"""

from __future__ import annotations

import pytest
import torch

from textrec.nn import GatedRNN, fused, projection

TOL32 = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # (one torch thread: conftest.py)


@pytest.fixture(params=[True, False], ids=["onednn", "no-onednn"])
def onednn(request, monkeypatch):
    """oneDNN's products on (for every size: these layers are below its rows-per-thread floor) or off."""
    monkeypatch.setenv("TEXTREC_ONEDNN", "1" if request.param else "0")
    monkeypatch.setattr(projection, "_ROWS_PER_THREAD", 0)
    if request.param and not projection.onednn_applies(torch.zeros(1), 1):
        pytest.skip("this torch has no oneDNN linear op for CPU float32: the layers take baddbmm (the no-onednn cases)")
    return request.param


@pytest.fixture(params=[True, False], ids=["sigmoid-tanh", "torch-tanh"])
def sigmoid_tanh(request, monkeypatch):
    """Forces the tanh-through-sigmoid path on for every size (or off), whatever this CPU's kernels."""
    monkeypatch.setattr(fused, "_SIGMOID_TANH", request.param)
    monkeypatch.setattr(fused, "_SIGMOID_TANH_FROM", 0)
    return request.param


def test_onednn_applies_only_to_cpu_float32_products_of_enough_rows(monkeypatch):
    monkeypatch.setenv("TEXTREC_ONEDNN", "1")
    available = projection._LINEAR is not None and torch.backends.mkldnn.is_available()
    rows = projection._ROWS_PER_THREAD * torch.get_num_threads()
    assert projection.onednn_applies(torch.zeros(1), rows) == available
    assert not projection.onednn_applies(torch.zeros(1), rows - 1)  # few rows on many threads: MKL
    assert not projection.onednn_applies(torch.zeros(1, dtype=torch.float64), rows)
    assert not projection.onednn_applies(torch.zeros(1, dtype=torch.bfloat16), rows)
    monkeypatch.setenv("TEXTREC_ONEDNN", "0")
    assert not projection.onednn_applies(torch.zeros(1), rows)


@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("x_grad", [True, False], ids=["x-grad", "no-x-grad"])
def test_input_projection_matches_autograd(D, x_grad, onednn):
    T, B, I, N = 6, 5, 24, 40
    x = torch.randn(T, B, I, requires_grad=x_grad)
    w = torch.randn(D, N, I, requires_grad=True)
    b = torch.randn(D, N, requires_grad=True)
    # the reference: autograd through the stacked directions and one batched product
    xd = x.unsqueeze(0) if D == 1 else torch.stack((x, x.flip(0)))
    expected = torch.baddbmm(b.unsqueeze(1), xd.reshape(D, T * B, I), w.transpose(1, 2)).view(D, T, B, N)
    got = projection.InputProjection.apply(x, w, b)
    torch.testing.assert_close(got, expected, **TOL32)
    weights = torch.randn_like(expected)
    inputs = [x, w, b] if x_grad else [w, b]
    want = torch.autograd.grad((expected * weights).sum(), inputs)
    have = torch.autograd.grad((got * weights).sum(), inputs)
    for a, e in zip(have, want):
        assert a.shape == e.shape and a.is_contiguous()
        torch.testing.assert_close(a, e, **TOL32)
    with torch.no_grad():  # the no-gradient path takes the same products
        torch.testing.assert_close(projection.project(projection.directions(x, D), w, b), expected, **TOL32)


def test_input_projection_gradcheck():
    # float64 takes torch's products (oneDNN's path is float32 only); this checks the backward's algebra.
    x = torch.randn(4, 3, 5, dtype=torch.double, requires_grad=True)
    w = torch.randn(2, 7, 5, dtype=torch.double, requires_grad=True)
    b = torch.randn(2, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(projection.InputProjection.apply, (x, w, b))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 4e-7), (torch.float64, 1e-15)])
def test_sigmoid_tanh_matches_tanh(dtype, atol, monkeypatch):
    monkeypatch.setattr(fused, "_SIGMOID_TANH", True)
    x = torch.cat((torch.linspace(-30, 30, 6001, dtype=dtype), torch.tensor([0.0, 1e-30, -1e-8, 1e-4], dtype=dtype)))
    out = torch.empty_like(x)
    assert fused.sigmoid_tanh_applies(x)  # 6,005 elements: over the threshold
    assert fused.tanh(x, out) is out
    torch.testing.assert_close(out, torch.tanh(x), atol=atol, rtol=0)
    assert out.abs().max() <= 1


def test_sigmoid_tanh_threshold_and_devices(monkeypatch):
    monkeypatch.setattr(fused, "_SIGMOID_TANH", True)
    assert not fused.sigmoid_tanh_applies(torch.zeros(fused._SIGMOID_TANH_FROM - 1))
    assert fused.sigmoid_tanh_applies(torch.zeros(fused._SIGMOID_TANH_FROM))
    assert not fused.sigmoid_tanh_applies(torch.zeros(fused._SIGMOID_TANH_FROM, device="meta"))
    monkeypatch.setattr(fused, "_SIGMOID_TANH", False)
    assert not fused.sigmoid_tanh_applies(torch.zeros(10**5))


VARIANTS = {
    "vanilla": dict(),
    "add-vstart-tanh-r2": dict(refine="add", refine_init="vanilla", refine_bound="tanh", refine_rank=2),
    "add-tanh": dict(refine="add", refine_bound="tanh"),
    "mul": dict(refine="mul"),
}
CASES = [(mode, v) for mode in ("lstm", "gru", "mgu") for v in VARIANTS] + [
    ("lstm", "add-io-vstart-tanh-r2"),  # the shipped model's layer (at rank 16)
]
VARIANTS["add-io-vstart-tanh-r2"] = dict(VARIANTS["add-vstart-tanh-r2"], refine_gates=("i", "o"))


@pytest.mark.parametrize("mode,variant", CASES, ids=[f"{m}-{v}" for m, v in CASES])
def test_layers_match_eager_on_the_speed_paths(mode, variant, onednn, sigmoid_tanh):
    rnn = GatedRNN(mode, 12, 8, num_layers=2, bidirectional=True, **VARIANTS[variant])
    with torch.no_grad():  # start-as-vanilla zeroes W_up: give the short connection something to do
        for p in rnn.short_connection_weights():
            p.normal_(0, 0.3)
    x = torch.randn(9, 4, 12, requires_grad=True)
    results = []
    for fast in (True, False):
        rnn.fast = fast
        out, _ = rnn(x)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        results.append([out, *torch.autograd.grad(loss, [x, *rnn.parameters()])])
        with torch.no_grad():
            results[-1].append(rnn(x)[0])  # inference (cached weights, inference layout)
    for a, b in zip(*results):
        # float32 rounding differs between the paths, relative to each tensor's largest value (unbounded
        # "mul" gates make gradients in the thousands)
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-6


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_gradcheck_on_the_speed_paths(mode, sigmoid_tanh):
    rnn = GatedRNN(mode, 5, 4, bidirectional=True, refine="add", refine_bound="tanh").double()
    x = torch.randn(5, 2, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rnn(t)[0], (x,))


def test_training_layout_of_the_recurrent_weights_is_a_view():
    rnn = GatedRNN("lstm", 6, 5, bidirectional=True)
    params = [rnn.layer_params(0, d) for d in range(2)]
    training = fused.prepare_weights("lstm", params, (), training=True)
    inference = fused.prepare_weights("lstm", params, ())
    torch.testing.assert_close(training["w_hh_t"], inference["w_hh_t"], atol=0, rtol=0)
    assert inference["w_hh_t"].is_contiguous()
    assert training["w_hh_t"].transpose(1, 2).is_contiguous()  # the stacked W_hh itself, read transposed
