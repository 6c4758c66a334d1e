"""The Triton step kernels (textrec/nn/triton_steps.py) against the torch-op loop, on the CPU.

Run by tests/test_triton_steps.py in a child process with TRITON_INTERPRET=1, under which Triton
runs the kernels on CPU tensors (Triton reads that variable when the kernels are defined, so it
cannot be set inside the test process). Each case runs a layer twice, with the kernels and with
TEXTREC_TRITON_RNN=0, and compares outputs, final states, recorded gates (training cases) and every gradient; two
float64 gradchecks run through the kernels. Prints one line per case; exits non-zero on the first
difference. Interpreted kernels are slow (milliseconds per launch), so the layers are tiny.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_nn import _gradcheck  # noqa: E402
from textrec.nn import GatedRNN, triton_steps  # noqa: E402

VARIANTS = {
    "vanilla": dict(refine="none"),
    "add-io-vstart-tanh": dict(refine="add", refine_gates=("i", "o"), refine_init="vanilla", refine_bound="tanh"),
    "add-all": dict(refine="add"),
    "mul-all-vstart": dict(refine="mul", refine_init="vanilla"),
    "add-map": dict(refine="add", input_map=True),
    "mul-f": dict(refine="mul", refine_gates=("f",)),
    "add-io-vstart-tanh-rank2": dict(refine="add", refine_gates=("i", "o"), refine_init="vanilla", refine_bound="tanh", refine_rank=2),
}
CALLS = {"forward": 0, "backward": 0}


def counted(name: str, fn):
    def wrapper(*args, **kwargs):
        CALLS[name] += 1
        return fn(*args, **kwargs)

    return wrapper


triton_steps.lstm_forward_step = counted("forward", triton_steps.lstm_forward_step)
triton_steps.lstm_backward_step = counted("backward", triton_steps.lstm_backward_step)


def layer(options: dict, dtype, layers=2, bidirectional=True, batch_first=False) -> GatedRNN:
    rnn = GatedRNN("lstm", 4, 3, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **options)
    with torch.no_grad():  # random weights everywhere, start-as-vanilla projections included
        for p in rnn.parameters():
            p.uniform_(-0.6, 0.6)
    return rnn.to(dtype)


def run(rnn: GatedRNN, x, state, kernels: bool, grad: bool):
    os.environ["TEXTREC_TRITON_RNN"] = "1" if kernels else "0"
    leaves = [x, *(state or ())]
    for t in [*leaves, *rnn.parameters()]:
        t.grad = None
    rnn.record_gates = grad  # recorded: every step's buffers kept; not: the scratch-buffer loop of inference
    with torch.set_grad_enabled(grad):
        out, (h, c) = rnn(x, state)
    values = [out, h, c]
    if grad:
        values += [v for pair in rnn.last_gates.values() for v in pair] + list(rnn.last_states.values())
        weights = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=weights, dtype=t.dtype)).sum() for t in (out, h, c))
        loss.backward()
        values += [t.grad for t in leaves] + [p.grad for p in rnn.parameters()]
    return [v.detach().clone() for v in values]


def compare(name: str, rnn: GatedRNN, x, state, grad: bool, tol: float) -> None:
    before = dict(CALLS)
    ours, reference = run(rnn, x, state, True, grad), run(rnn, x, state, False, grad)
    if CALLS["forward"] == before["forward"] or (grad and CALLS["backward"] == before["backward"]):
        raise AssertionError(f"{name}: the kernels did not run")
    assert len(ours) == len(reference)
    worst = max(float((a - b).abs().max() / max(1.0, float(b.abs().max()))) for a, b in zip(ours, reference))
    if worst > tol:
        raise AssertionError(f"{name}: kernels and torch ops differ by {worst:.3g} (relative to scale), tolerance {tol:g}")
    print(f"ok {name}: {len(ours)} tensors, largest difference {worst:.2g}")


def main() -> None:
    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        for name, options in VARIANTS.items():
            for grad in (True, False):
                rnn = layer(options, dtype)
                x = torch.randn(5, 3, 4, dtype=dtype, requires_grad=grad)
                compare(f"{name} {dtype} {'train' if grad else 'infer'}", rnn, x, None, grad, tol)
    # the shapes and arguments around the loop: batch-first, one direction, a given initial state with gradients
    options = VARIANTS["add-io-vstart-tanh"]
    rnn = layer(options, torch.float64, layers=1, bidirectional=False, batch_first=True)
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    compare("add-io-vstart-tanh batch-first one-direction with state", rnn, x, state, True, 1e-12)
    rnn = layer(options, torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)  # unbatched
    compare("add-io-vstart-tanh unbatched", rnn, x, None, True, 1e-12)
    rnn = layer(VARIANTS["add-all"], torch.float32)
    with torch.no_grad():  # pre-activations of hundreds: exp overflows float32 unless the kernels avoid it
        for p in rnn.parameters():
            p.mul_(60)
    x = torch.randn(5, 3, 4, requires_grad=True)
    compare("add-all float32 saturated", rnn, x, None, True, 1e-5)
    os.environ.pop("TEXTREC_TRITON_RNN")
    for name in ("add-io-vstart-tanh", "mul-all-vstart"):
        before = CALLS["backward"]
        _gradcheck(layer(VARIANTS[name], torch.float64, layers=1), T=2, B=2)
        assert CALLS["backward"] > before, f"gradcheck {name}: the kernels did not run"
        print(f"ok gradcheck {name}")
    device_check_compares()
    print(f"kernel launches: {CALLS['forward']} forward steps, {CALLS['backward']} backward steps")


def device_check_compares() -> None:
    """tools/device_check's checks of the kernels, which a lease runs on CUDA, run on a CRNN here too: agreement
    with the torch ops, and the speed test, which interpreted kernels (far slower than torch ops) must fail."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import device_check
    from textrec.model import CRNNConfig

    config = CRNNConfig(num_classes=11, channels=(4, 8, 8, 8, 8, 8, 8), hidden_size=6, refine="add",
                        refine_gates=("i", "o"), refine_init="vanilla", refine_bound="tanh")
    images = torch.randn(2, 1, 32, 40)
    before = CALLS["backward"]
    device_check.kernels_agree(config, images, repeats=1)
    assert CALLS["backward"] > before and "TEXTREC_TRITON_RNN" not in os.environ
    try:
        device_check.kernels_faster(config, images, graphs=False, repeats=1)
    except RuntimeError as error:
        assert str(error).startswith("slower: "), error
    else:
        raise AssertionError("interpreted kernels reported faster than torch ops")
    assert "TEXTREC_TRITON_RNN" not in os.environ
    print("ok device check compares the paths")


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (tests/test_triton_steps.py does)")
    main()
