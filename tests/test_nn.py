"""Tests for textrec.nn: equivalence with torch, gradients, MGU reference, refined gates."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from textrec.nn import GatedRNN, gate_stats, recording_gates

TOL = dict(atol=1e-5, rtol=1e-5)


def _grads(module, x, loss):
    params = [p for _, p in sorted(module.named_parameters())]
    return torch.autograd.grad(loss, [x, *params])


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Tiny batched products are slow when OpenMP threads wait on a busy machine; one thread
    # keeps these tests fast and deterministic. The previous setting is restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize(
    "kind,layers,bidirectional,batch_first,with_state",
    [
        ("lstm", 1, False, False, False),
        ("lstm", 2, True, False, True),
        ("lstm", 3, True, True, False),
        ("lstm", 2, False, True, True),
        ("gru", 1, True, False, True),
        ("gru", 2, False, False, False),
        ("gru", 3, True, True, True),
        ("gru", 2, True, True, False),
    ],
)
def test_from_torch_matches_outputs_and_gradients(kind, layers, bidirectional, batch_first, with_state, fast):
    torch_cls = nn.LSTM if kind == "lstm" else nn.GRU
    ref = torch_cls(6, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    ours = GatedRNN.from_torch(ref)
    ours.fast = fast
    T, B, D = 7, 3, 2 if bidirectional else 1
    x = torch.randn((B, T, 6) if batch_first else (T, B, 6), requires_grad=True)
    state = None
    if with_state:
        h0 = torch.randn(layers * D, B, 5)
        state = (h0, torch.randn(layers * D, B, 5)) if kind == "lstm" else h0
    out_ref, st_ref = ref(x, state)
    out, st = ours(x, state)
    torch.testing.assert_close(out, out_ref, **TOL)
    for a, b in zip(st if kind == "lstm" else (st,), st_ref if kind == "lstm" else (st_ref,)):
        torch.testing.assert_close(a, b, **TOL)
    w = torch.randn_like(out)
    h_w = torch.randn_like(st[0] if kind == "lstm" else st)

    def loss(o, s):
        return (o * w).sum() + ((s[0] if kind == "lstm" else s) * h_w).sum()

    for a, b in zip(_grads(ours, x, loss(out, st)), _grads(ref, x, loss(out_ref, st_ref))):
        torch.testing.assert_close(a, b, **TOL)


def test_crnn_shapes():
    rnn = GatedRNN("lstm", 512, 256, num_layers=2, bidirectional=True, refine="add", batch_first=False)
    out, (h, c) = rnn(torch.randn(26, 2, 512))
    assert out.shape == (26, 2, 512)
    assert h.shape == c.shape == (4, 2, 256)


@pytest.mark.parametrize("mode", ["lstm", "gru", "mgu"])
@pytest.mark.parametrize("refine", ["none", "add", "mul"])
def test_all_modes_run(mode, refine):
    rnn = GatedRNN(mode, 8, 4, num_layers=2, bidirectional=True, refine=refine)
    out, state = rnn(torch.randn(5, 3, 8))
    assert out.shape == (5, 3, 8)
    h = state[0] if mode == "lstm" else state
    assert h.shape == (4, 3, 4)


# ---------------------------------------------------------------- gradcheck (float64)

MODES = ["lstm", "gru", "mgu"]
REFINES = ["none", "add", "mul"]


def _gradcheck(rnn: GatedRNN, T=3, B=2):
    rnn = rnn.double()
    names = [n for n, _ in rnn.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in rnn.named_parameters()]
    D = rnn.num_directions
    x = torch.randn(T, B, rnn.input_size, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(rnn.num_layers * D, B, rnn.hidden_size, dtype=torch.double, requires_grad=True)
    c0 = torch.randn_like(h0, requires_grad=True)

    def f(x, h0, c0, *ps):
        state = (h0, c0) if rnn.mode == "lstm" else h0
        out, st = torch.func.functional_call(rnn, dict(zip(names, ps)), (x, state))
        return (out, *st) if rnn.mode == "lstm" else (out, st)

    inputs = (x, h0, c0, *params) if rnn.mode == "lstm" else (x, h0, torch.zeros(1, dtype=torch.double), *params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("width", ["identity", "projection"])
@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode, refine, width, fast):
    hidden = 3
    # the eager path is also pinned to the fast one to 1e-10 in float64 (test_fast_matches_eager),
    # so one layer suffices for its gradcheck
    layers = 2 if fast else 1
    rnn = GatedRNN(mode, hidden if width == "identity" else 2, hidden, num_layers=layers, bidirectional=True, refine=refine)
    if refine != "none":
        # layer 0 uses identity or projection as asked; layer 1 (input 2H) always projects
        assert hasattr(rnn, "weight_refine_l0") == (width == "projection")
        assert hasattr(rnn, "weight_refine_l1") == (layers == 2)
    rnn.fast = fast
    _gradcheck(rnn)


@pytest.mark.parametrize("mode,gates", [("lstm", ("f",)), ("lstm", ("i", "o")), ("gru", ("z",)), ("gru", ("r",))])
@pytest.mark.parametrize("refine", ["add", "mul"])
def test_gradcheck_gate_subsets(mode, gates, refine):
    rnn = GatedRNN(mode, 3, 3, num_layers=1, bidirectional=False, refine=refine, refine_gates=gates)
    _gradcheck(rnn)


# ---------------------------------------------------------------- MGU reference


def _mgu_reference(rnn: GatedRNN, x, h0):
    """Zhou et al. (2016), one layer / direction at a time, straight from the equations."""
    H = rnn.hidden_size
    layer_in = x
    finals = []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(rnn.num_directions):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            W, U = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
            b = getattr(rnn, "bias_ih" + sfx) + getattr(rnn, "bias_hh" + sfx)
            W_f, W_h, U_f, U_h, b_f, b_h = W[:H], W[H:], U[:H], U[H:], b[:H], b[H:]
            W_r = getattr(rnn, "weight_refine" + sfx, None)
            h = h0[layer * rnn.num_directions + d]
            seq = [None] * len(layer_in)
            for t in range(len(layer_in)) if d == 0 else reversed(range(len(layer_in))):
                x_t = layer_in[t]
                f = torch.sigmoid(x_t @ W_f.T + h @ U_f.T + b_f)
                if rnn.refine != "none":
                    x_tilde = x_t if W_r is None else x_t @ W_r.T
                    f = f + x_tilde if rnn.refine == "add" else f * x_tilde
                h_tilde = torch.tanh(x_t @ W_h.T + (f * h) @ U_h.T + b_h)
                h = (1 - f) * h + f * h_tilde
                seq[t] = h
            outs.append(torch.stack(seq))
            finals.append(h)
        layer_in = torch.cat(outs, -1)
    return layer_in, torch.stack(finals)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("input_size", [4, 5])
def test_mgu_matches_equations(refine, input_size, fast):
    rnn = GatedRNN("mgu", input_size, 4, num_layers=2, bidirectional=True, refine=refine)
    rnn.fast = fast
    x = torch.randn(6, 3, input_size)
    h0 = torch.randn(4, 3, 4)
    out, h = rnn(x, h0)
    ref_out, ref_h = _mgu_reference(rnn, x, h0)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(h, ref_h, **TOL)


# ---------------------------------------------------------------- refined gates


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("refine", ["add", "mul"])
def test_refined_gates_differ_and_leave_unit_interval(mode, refine):
    vanilla = GatedRNN(mode, 6, 6, refine="none")
    refined = GatedRNN(mode, 6, 6, refine=refine)
    refined.load_state_dict(vanilla.state_dict())  # identity x̃: same parameters
    x = 2 * torch.randn(10, 4, 6)
    with recording_gates(vanilla) as v_rec, recording_gates(refined) as r_rec:
        out_v, _ = vanilla(x)
        out_r, _ = refined(x)
    assert not torch.allclose(out_v, out_r)
    v_gates, r_gates = v_rec[""], r_rec[""]
    assert set(r_gates) == {f"l0.{g}" for g in {"lstm": "ifo", "gru": "rz", "mgu": "f"}[mode]}
    for name, (sig, val) in r_gates.items():
        # same parameters and h0 = 0: the σ parts agree at the first step, then the states differ
        torch.testing.assert_close(sig[:, 0], v_gates[name][0][:, 0])
    stats_v, stats_r = gate_stats(v_gates), gate_stats(r_gates)
    assert 0.0 <= stats_v["value_min"] and stats_v["value_max"] <= 1.0 and stats_v["outside_01"] == 0.0
    assert stats_r["value_min"] < 0.0 or stats_r["value_max"] > 1.0
    assert stats_r["outside_01"] > 0.1
    for (sig, val) in r_gates.values():
        assert not torch.allclose(sig, val)


def test_gate_stats_saturation_counts():
    sig = torch.tensor([0.01, 0.5, 0.99, 0.96]).view(1, 4, 1, 1)
    stats = gate_stats({"l0.f": (sig, sig * 2)})
    assert stats["saturated"] == pytest.approx(0.75)
    assert stats["below_low"] == pytest.approx(0.25)
    assert stats["value_max"] == pytest.approx(1.98)
    with pytest.raises(ValueError):
        gate_stats({})


def test_record_gates_off_by_default_and_restored():
    rnn = GatedRNN("lstm", 4, 4, refine="add")
    rnn(torch.randn(3, 2, 4))
    assert rnn.last_gates == {}
    with recording_gates(rnn):
        rnn(torch.randn(3, 2, 4))
    assert rnn.record_gates is False
    assert set(rnn.last_gates) == {"l0.i", "l0.f", "l0.o"}
    assert rnn.last_gates["l0.i"][0].shape == (1, 3, 2, 4)


# ---------------------------------------------------------------- fast path vs eager


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("grad", [True, False], ids=["train", "infer"])
def test_fast_matches_eager(mode, refine, grad):
    # float64: refined gates outside (0, 1) can amplify float32 rounding differences
    rnn = GatedRNN(mode, 5, 4, num_layers=2, bidirectional=True, refine=refine, batch_first=True).double()
    x = torch.randn(3, 7, 5, dtype=torch.double, requires_grad=grad)
    h0 = torch.randn(4, 3, 4, dtype=torch.double)
    state = (h0, torch.randn(4, 3, 4, dtype=torch.double)) if mode == "lstm" else h0
    results = []
    for fast in (True, False):
        rnn.fast = fast
        rnn.record_gates = True
        with torch.set_grad_enabled(grad):
            out, st = rnn(x, state)
        flat = [out, *(st if mode == "lstm" else (st,))]
        gates = {k: v for k, v in rnn.last_gates.items()}
        if grad:
            loss = sum((t * torch.randn_like(t, generator=torch.Generator().manual_seed(i))).sum() for i, t in enumerate(flat))
            flat += list(_grads(rnn, x, loss))
        results.append((flat, gates))
    (fast_vals, fast_gates), (eager_vals, eager_gates) = results
    tight = dict(atol=1e-10, rtol=1e-10)
    for a, b in zip(fast_vals, eager_vals):
        torch.testing.assert_close(a, b, **tight)
    assert fast_gates.keys() == eager_gates.keys()
    for k in fast_gates:
        for a, b in zip(fast_gates[k], eager_gates[k]):
            torch.testing.assert_close(a, b, **tight)


def test_inference_weight_cache_follows_updates():
    rnn = GatedRNN("lstm", 4, 4, num_layers=2, bidirectional=True, refine="mul").eval()
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        first, _ = rnn(x)
        again, _ = rnn(x)
        torch.testing.assert_close(first, again)
        rnn.weight_hh_l1_reverse.mul_(0.5)
        rnn.weight_refine_l1.add_(0.1)
        changed, _ = rnn(x)
        rnn.fast = False
        eager, _ = rnn(x)
    assert not torch.allclose(first, changed)
    torch.testing.assert_close(changed, eager, **TOL)


# ---------------------------------------------------------------- interface


def test_unbatched_input_and_dropout():
    rnn = GatedRNN("gru", 4, 3, num_layers=2, dropout=0.5, refine="add")
    out, h = rnn.eval()(torch.randn(5, 4))
    assert out.shape == (5, 3) and h.shape == (2, 3)
    x = torch.randn(5, 2, 4)
    rnn.train()
    a, _ = rnn(x)
    b, _ = rnn(x)
    assert not torch.allclose(a, b)  # dropout between layers is active in training
    rnn.eval()
    torch.testing.assert_close(rnn(x)[0], rnn(x)[0])


def test_parameter_names_follow_torch():
    rnn = GatedRNN("lstm", 6, 4, num_layers=2, bidirectional=True, refine="add")
    names = dict(rnn.named_parameters())
    assert names["weight_ih_l0"].shape == (16, 6)
    assert names["weight_hh_l1_reverse"].shape == (16, 4)
    assert names["weight_refine_l0"].shape == (4, 6)
    assert names["weight_refine_l1_reverse"].shape == (4, 8)
    assert not any(n.startswith("weight_refine") for n in dict(GatedRNN("lstm", 6, 4).named_parameters()))
    assert not hasattr(GatedRNN("gru", 4, 4, refine="mul"), "weight_refine_l0")  # identity x̃


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="rnn"), "unknown recurrent mode"),
        (dict(refine="sub"), "unknown refinement"),
        (dict(refine="add", refine_gates=("g",)), "cannot refine gate"),
        (dict(refine="add", refine_gates=("f", "f")), "twice"),
        (dict(refine="add", refine_gates="f"), "sequence of gate names"),
        (dict(refine="none", refine_gates=("f",)), "needs refine"),
        (dict(mode="gru", refine="mul", refine_gates=("i",)), "sigmoid gates are r, z"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = dict(mode="lstm", input_size=4, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GatedRNN(**args)


def test_invalid_inputs():
    rnn = GatedRNN("lstm", 4, 3, num_layers=2)
    with pytest.raises(ValueError, match="input width"):
        rnn(torch.randn(5, 2, 6))
    with pytest.raises(ValueError, match="state of shape"):
        rnn(torch.randn(5, 2, 4), (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)))
    with pytest.raises(ValueError, match="tuple"):
        rnn(torch.randn(5, 2, 4), torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="one tensor"):
        GatedRNN("gru", 4, 3)(torch.randn(5, 2, 4), (torch.zeros(1, 2, 3),))
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 4), [5, 3])
    with pytest.raises(TypeError, match="PackedSequence"):
        rnn(packed)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "mgu"])
@pytest.mark.parametrize("kwargs", [{}, dict(refine="add"), dict(refine="mul", refine_rank=2), dict(refine="add", input_map=True)],
                         ids=["vanilla", "add", "mul-rank2", "add-map"])
def test_empty_batch_gives_empty_outputs(mode, kwargs, fast):
    # as torch.nn.LSTM does: (T, 0, D·H) out, (layers·D, 0, H) states, and a backward that runs
    rnn = GatedRNN(mode, 8, 6, num_layers=2, bidirectional=True, **kwargs)
    rnn.fast = fast
    x = torch.randn(5, 0, 8, requires_grad=True)
    out, state = rnn(x)
    assert out.shape == (5, 0, 12)
    assert (state[0] if mode == "lstm" else state).shape == (4, 0, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape
    with torch.no_grad():
        assert rnn(x)[0].shape == (5, 0, 12)


def test_from_torch_rejects_unsupported():
    with pytest.raises(ValueError, match="proj_size"):
        GatedRNN.from_torch(nn.LSTM(4, 4, proj_size=2))
    with pytest.raises(ValueError, match="bias=False"):
        GatedRNN.from_torch(nn.GRU(4, 4, bias=False))
    with pytest.raises(TypeError, match="LSTM or torch.nn.GRU"):
        GatedRNN.from_torch(nn.RNN(4, 4))


def test_from_torch_keeps_dtype_and_mode_and_can_refine():
    ref = nn.GRU(4, 3, batch_first=True).double().eval()
    ours = GatedRNN.from_torch(ref)
    assert ours.weight_ih_l0.dtype == torch.float64 and not ours.training and ours.batch_first
    refined = GatedRNN.from_torch(ref, refine="add")
    assert refined.refine == "add" and hasattr(refined, "weight_refine_l0")
    torch.testing.assert_close(refined.weight_hh_l0, ref.weight_hh_l0)


def test_autocast_and_inference_mode():
    rnn = GatedRNN("lstm", 4, 3, num_layers=2, bidirectional=True, refine="add")
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        expected, _ = rnn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = rnn(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, **TOL)
    with torch.inference_mode():
        out, _ = rnn(x)
        out, _ = rnn(x)  # second call uses the cached stacked weights
    torch.testing.assert_close(out, expected, **TOL)
    out, _ = rnn(x)  # and normal mode afterwards still works, with gradients
    out.sum().backward()
    assert rnn.weight_hh_l1.grad is not None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("refine", REFINES)
def test_inference_one_direction_at_a_time_matches_eager(mode, refine, monkeypatch):
    # large layers run their two directions one after the other without gradients (cache
    # friendlier); force that path at a tiny size
    from textrec.nn import fused

    monkeypatch.setattr(fused, "_SPLIT_BYTES", 0)
    rnn = GatedRNN(mode, 5, 4, num_layers=2, bidirectional=True, refine=refine).double().eval()
    x = torch.randn(6, 3, 5, dtype=torch.double)
    results = []
    for fast in (True, False):
        rnn.fast = fast
        with torch.no_grad(), recording_gates(rnn):
            out, state = rnn(x)
        results.append([out, *(state if mode == "lstm" else (state,)), *[t for v in rnn.last_gates.values() for t in v]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_kernel_path_matches_ours(mode, batch_first):
    """Vanilla layers run as torch's fused kernel on GPUs (`torch_kernel`); it must equal our path."""
    torch.manual_seed(0)
    rnn = GatedRNN(mode, 6, 5, num_layers=2, bidirectional=True, batch_first=batch_first).double()
    x = torch.randn(3, 7, 6, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(4, 3 if batch_first else 7, 5, dtype=torch.double)
    state = (h0, torch.randn_like(h0)) if mode == "lstm" else h0
    ours, ours_state = rnn(x, state)
    theirs, their_state = rnn.torch_kernel(x, state)
    torch.testing.assert_close(theirs, ours)
    for a, b in zip(their_state if mode == "lstm" else (their_state,), ours_state if mode == "lstm" else (ours_state,)):
        torch.testing.assert_close(a, b)
    grads_ours = torch.autograd.grad(ours.square().sum(), [x, *rnn.parameters()])
    grads_theirs = torch.autograd.grad(theirs.square().sum(), [x, *rnn.parameters()])
    for a, b in zip(grads_theirs, grads_ours):
        torch.testing.assert_close(a, b)


def test_torch_kernel_is_used_only_where_it_applies(monkeypatch):
    assert not GatedRNN("lstm", 6, 5).torch_kernel_applies(torch.randn(4, 2, 6))  # CPU: ours
    on_gpu = type("OnGpu", (), {"is_cuda": True, "dim": lambda self: 3})()  # what the check looks at
    assert GatedRNN("lstm", 6, 5).torch_kernel_applies(on_gpu)
    assert not GatedRNN("lstm", 6, 5, refine="add").torch_kernel_applies(on_gpu)
    assert not GatedRNN("mgu", 6, 5).torch_kernel_applies(on_gpu)
    recording = GatedRNN("gru", 6, 5)
    recording.record_gates = True
    assert not recording.torch_kernel_applies(on_gpu)
    own = GatedRNN("lstm", 6, 5)
    own.use_torch_kernel = False  # one layer through textrec's kernel (benchmarks/rnn_speed.py's "own kernel")
    assert not own.torch_kernel_applies(on_gpu) and not own.torch_kernel_enabled()
    monkeypatch.setenv("TEXTREC_TORCH_RNN", "0")
    assert not GatedRNN("lstm", 6, 5).torch_kernel_applies(on_gpu)


def test_torch_kernel_path_under_autocast_runs_in_the_autocast_dtype():
    rnn = GatedRNN("lstm", 6, 5, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, 6)
    reference, _ = rnn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = rnn.torch_kernel(x)
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.02, rtol=0.05)
    out.float().sum().backward()
    assert rnn.weight_ih_l0.grad.dtype == torch.float32 and rnn.weight_ih_l0.grad.abs().sum() > 0


def test_tensor_core_matmuls_only_on_cuda_and_restores_the_flag():
    from textrec.nn import tensor_core_matmuls

    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = flags[0].allow_tf32, flags[1].allow_tf32
    try:
        flags[0].allow_tf32, flags[1].allow_tf32 = False, True
        with tensor_core_matmuls("cpu"):
            assert flags[0].allow_tf32 is False
        with tensor_core_matmuls(torch.device("cuda")):  # the flag is settable without a GPU
            assert flags[0].allow_tf32 is True
        assert flags[0].allow_tf32 is False
        flags[1].allow_tf32 = False  # full float32 asked for: left alone
        with tensor_core_matmuls("cuda"):
            assert flags[0].allow_tf32 is False
        flags[1].allow_tf32 = True
        try:
            with tensor_core_matmuls("cuda"):
                raise RuntimeError("inside")
        except RuntimeError:
            pass
        assert flags[0].allow_tf32 is False
    finally:
        flags[0].allow_tf32, flags[1].allow_tf32 = before
