"""CUDA graphs of the recurrent layer in training (textrec/nn/graphs.py): when they are used, when not,
and that installing them changes nothing else. The capture itself needs a GPU (tools/device_check.py
compares graphed and plain steps there); here a stand-in for torch.cuda.make_graphed_callables runs the
same module, so the bookkeeping is checked on any machine."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from textrec.nn import GatedRNN, GraphedTraining


class StandIn:
    """Records captures and replays; replays run the module that would have been captured."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.captures, self.calls = [], 0
        self.quiet = False  # set by the graphs' `quiet` context in the tests that give one

    # torch 2.11's signature (the GPU machine's): an argument it lacks failed lease 4's capture
    def __call__(self, callables, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        module = callables
        self.captures.append((tuple(sample_args[0].shape), self.quiet))
        assert not torch.is_autocast_enabled("cpu") or not torch.is_autocast_cache_enabled()

        def replay(x):
            self.calls += 1
            return module(x)

        return replay


def _layer():
    torch.manual_seed(0)
    return GatedRNN("lstm", 6, 4, num_layers=2, bidirectional=True, refine="add", refine_gates=("i", "o"),
                    refine_init="vanilla", refine_bound="tanh")


def _step(rnn, x):
    out, _ = rnn(x)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum().backward()
    return out.detach(), [p.grad.clone() for p in rnn.parameters()]


def test_training_calls_of_the_captured_shape_replay_with_the_same_results():
    plain, graphed = _layer(), _layer()
    stand_in = StandIn()
    graphs = GraphedTraining(graphed, make_graphed=stand_in, device_type="cpu")
    x = torch.randn(5, 3, 6, requires_grad=True)
    for _ in range(2):
        for rnn in (plain, graphed):
            rnn.zero_grad()
        want, got = _step(plain, x), _step(graphed, x)
        torch.testing.assert_close(got[0], want[0])
        for a, b in zip(got[1], want[1]):
            torch.testing.assert_close(a, b)
    assert stand_in.captures == [((5, 3, 6), False)] and stand_in.calls == 2 and graphs.replays == 2


def test_other_threads_are_held_quiet_while_the_graphs_are_captured_only():
    # training sets `quiet` to FinishAhead.paused: the thread that finishes batches on a side stream must make
    # no CUDA call during the capture (torch 2.11 captures in "global" mode, where such calls spoil it)
    rnn, stand_in = _layer(), StandIn()
    graphs = GraphedTraining(rnn, make_graphed=stand_in, device_type="cpu")

    @contextlib.contextmanager
    def quiet():
        stand_in.quiet = True
        try:
            yield
        finally:
            stand_in.quiet = False

    graphs.quiet = quiet
    x = torch.randn(5, 3, 6, requires_grad=True)
    rnn(x)
    rnn(x)
    assert stand_in.captures == [((5, 3, 6), True)] and not stand_in.quiet and graphs.replays == 2


def test_everything_else_runs_the_plain_layer():
    rnn = _layer()
    stand_in = StandIn()
    graphs = GraphedTraining(rnn, make_graphed=stand_in, device_type="cpu")
    x = torch.randn(5, 3, 6, requires_grad=True)
    rnn(x)  # captured
    rnn(torch.randn(5, 2, 6, requires_grad=True))  # another batch size
    rnn(torch.randn(7, 3, 6, requires_grad=True))  # another length
    rnn(x, (torch.zeros(4, 3, 4), torch.zeros(4, 3, 4)))  # an initial state
    with torch.no_grad():
        rnn(x)
    rnn.eval()
    rnn(x)
    rnn.train()
    rnn.record_gates = True
    rnn(x)
    rnn.record_gates = False
    assert len(stand_in.captures) == 1 and stand_in.calls == 1 and graphs.replays == 1
    rnn(x)
    assert graphs.replays == 2


def test_a_failed_capture_turns_the_graphs_off_once_and_says_why():
    rnn = _layer()
    heard = []
    graphs = GraphedTraining(rnn, on_failure=heard.append, make_graphed=StandIn(fail=True), device_type="cpu")
    x = torch.randn(5, 3, 6, requires_grad=True)
    out, _ = rnn(x)
    out2, _ = rnn(x)
    assert heard == [graphs.failure] and "operation not permitted" in graphs.failure
    assert out.shape == out2.shape == (5, 3, 8) and graphs.replays == 0


def test_installing_changes_no_parameter_and_remove_restores_the_layer():
    rnn = _layer()
    keys = list(rnn.state_dict())
    graphs = GraphedTraining(rnn, make_graphed=StandIn(), device_type="cpu")
    assert list(rnn.state_dict()) == keys and "forward" in rnn.__dict__
    graphs.remove()
    assert "forward" not in rnn.__dict__
    out, _ = rnn(torch.randn(5, 3, 6))
    assert out.shape == (5, 3, 8)


def test_graphs_leave_cpu_tensors_alone_by_default():
    rnn = _layer()
    stand_in = StandIn()
    GraphedTraining(rnn, make_graphed=stand_in)  # device_type "cuda"
    rnn(torch.randn(5, 3, 6, requires_grad=True))
    assert stand_in.captures == []


def test_training_installs_no_graphs_off_a_gpu(monkeypatch, tmp_path):
    from textrec.train import TrainCallbacks, TrainConfig, _Run

    config = TrainConfig(train_data=["synth"], val_data=[], output=str(tmp_path / "run"), device="cpu",
                         refine="add", refine_gates=("i", "o"), channels=(8, 16, 16, 16, 32, 32, 32), hidden_size=16)
    trainer = _Run(config, TrainCallbacks())
    assert trainer._recurrence_graphs() is None
    trainer.device = torch.device("cuda")  # what a GPU run would do, without touching a GPU
    graphs = trainer._recurrence_graphs()
    assert isinstance(graphs, GraphedTraining) and graphs.rnn is trainer.model.sequence
    graphs.remove()
    monkeypatch.setitem(os.environ, "TEXTREC_CUDA_GRAPHS", "0")
    assert trainer._recurrence_graphs() is None


def test_for_training_installs_only_where_the_graphs_can_help(monkeypatch):
    from textrec.nn import for_training

    refined = _layer()
    assert for_training(refined, "cpu") is None and "forward" not in refined.__dict__
    assert for_training(GatedRNN("lstm", 6, 4), "cuda") is None  # cuDNN's kernel computes a vanilla LSTM
    assert for_training(torch.nn.LSTM(6, 4), "cuda") is None
    graphs = for_training(refined, "cuda")
    assert isinstance(graphs, GraphedTraining) and graphs.rnn is refined
    graphs.remove()
    # a vanilla layer kept on textrec's kernel (per layer, or by TEXTREC_TORCH_RNN=0) gets the graphs
    own = GatedRNN("lstm", 6, 4)
    own.use_torch_kernel = False
    assert isinstance(for_training(own, "cuda"), GraphedTraining)
    monkeypatch.setitem(os.environ, "TEXTREC_TORCH_RNN", "0")
    assert isinstance(for_training(GatedRNN("lstm", 6, 4), "cuda"), GraphedTraining)
    monkeypatch.setitem(os.environ, "TEXTREC_CUDA_GRAPHS", "0")
    assert for_training(refined, "cuda") is None


def _gradient_edges(outputs) -> dict[int, int]:
    """How many gradient edges of the autograd graph behind `outputs` end in each leaf (by id of the leaf)."""
    counts: dict[int, int] = {}
    seen, todo = set(), [o.grad_fn for o in outputs if o.grad_fn is not None]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            if hasattr(child, "variable"):  # AccumulateGrad: the edge ends in a leaf
                counts[id(child.variable)] = counts.get(id(child.variable), 0) + 1
            else:
                todo.append(child)
    return counts


@pytest.mark.parametrize("refine", [None, "add"])
def test_what_the_graphs_capture_sends_one_gradient_to_each_leaf(refine):
    # A leaf with two gradients has them summed on the stream of its AccumulateGrad node; under capture
    # (torch 2.11) that sum fell outside the graph and replays gave a zero input gradient. The module that
    # GraphedTraining hands to make_graphed_callables must send one gradient to its input and to each weight.
    torch.manual_seed(0)
    options = {} if refine is None else dict(refine=refine, refine_gates=("i", "o"), refine_init="vanilla", refine_bound="tanh")
    rnn = GatedRNN("lstm", 6, 4, num_layers=2, bidirectional=True, **options)
    captured = []

    def make_graphed(module, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
        captured.append((module, sample_args))
        return module

    GraphedTraining(rnn, make_graphed=make_graphed, device_type="cpu")
    rnn.train()
    rnn(torch.randn(5, 3, 6, requires_grad=True))
    module, (sample,) = captured[0]
    out, (h, c) = module(sample)
    counts = _gradient_edges([out, h, c])
    assert counts[id(sample)] == 1
    assert {name: counts.get(id(p), 0) for name, p in module.named_parameters()} == {name: 1 for name, _ in module.named_parameters()}


@pytest.mark.parametrize("buckets", [False, True], ids=["full-width", "width-buckets"])
def test_training_holds_the_finish_ahead_thread_while_it_captures(monkeypatch, tmp_path, buckets):
    # On a GPU, batches are finished in another thread (--finish-ahead) while the first step captures the graphs;
    # torch 2.11 captures in "global" mode, where that thread's CUDA calls would spoil the capture. Here the
    # training loop's wiring, on the CPU: the capture runs with the FinishAhead thread held.
    import textrec.train as train_module
    from imagegen import png_bytes, render_word, write_lmdb
    from textrec.synth.ahead import FinishAhead
    from textrec.train import TrainCallbacks, TrainConfig, train

    held = []

    def graphed_on_cpu(module, device, on_failure=None, max_shapes=1):
        graphs = GraphedTraining(module, on_failure=on_failure, make_graphed=stand_in, device_type="cpu", max_shapes=max_shapes)
        installed.append(graphs)
        return graphs

    class Checking(StandIn):
        def __call__(self, callables, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
            quiet = installed[0].quiet
            held.append(isinstance(getattr(quiet, "__self__", None), FinishAhead) and quiet.__self__._finishing.locked())
            return super().__call__(callables, sample_args, num_warmup_iters, allow_unused_input, pool)

    installed, stand_in = [], Checking()
    monkeypatch.setattr(train_module, "for_training", graphed_on_cpu)
    # Batches of 2 from 6 words of three widths: a pool of 3 steps holds all 6, dealt out as 3 widths.
    names = ("a", "to", "gate", "door", "international", "organization")
    words = write_lmdb(tmp_path / "words", [(png_bytes(render_word(w)), w) for w in names])
    config = TrainConfig(
        train_data=[str(words)], val_data=[], output=str(tmp_path / "run"), device="cpu", max_steps=3, batch_size=2,
        refine="add", refine_gates=["i", "o"], channels=(8, 16, 16, 16, 32, 32, 32), hidden_size=16, workers=0,
        finish_ahead=2, augment=False, width_buckets=3 if buckets else 0,
    )
    result = train(config, TrainCallbacks())
    assert result.steps == 3
    shapes = {shape for shape, _ in stand_in.captures}
    if buckets:  # a capture per width the buckets cut to (the words' widths differ), each with the thread held
        assert len(shapes) == len(held) == 3 and all(held) and installed[0].max_shapes == 1 + 100 // 16
    else:
        assert held == [True]  # one capture, with the thread held
    assert stand_in.calls == 3 and installed[0].replays == 3  # every step ran the graphs (the first right after capturing)


@pytest.mark.parametrize("widths", [None, (64, 32)], ids=["one-width", "two-widths"])
def test_the_device_checks_graph_comparison_runs_each_width_it_is_given(widths, monkeypatch):
    """tools/device_check.graphs_agree on the CPU with the stand-in: with two widths (width buckets) each is captured
    when first seen and every step replays; a capture the layer could not make is reported."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import device_check
    from textrec.model import CRNN, CRNNConfig

    stand_in = StandIn()
    monkeypatch.setattr(
        device_check, "GraphedTraining",
        lambda rnn, max_shapes=1: GraphedTraining(rnn, make_graphed=stand_in, device_type="cpu", max_shapes=max_shapes),
    )
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    config = CRNNConfig(num_classes=37, refine="add", refine_gates=("i", "o"), channels=(8, 16, 16, 16, 32, 32, 32), hidden_size=16)
    images = torch.randn(4, 1, 32, 64)
    device_check.graphs_agree(config, images, steps=4, widths=widths)
    assert [shape[0] for shape, _ in stand_in.captures] == ([17] if widths is None else [17, 9])  # frames of 64 and 32 px
    if widths:  # one shape too few: the steps at the second width run the plain layer, and the check says so
        monkeypatch.setattr(
            device_check, "GraphedTraining",
            lambda rnn, max_shapes=1: GraphedTraining(rnn, make_graphed=StandIn(), device_type="cpu", max_shapes=1),
        )
        with pytest.raises(RuntimeError, match="2 of 4 steps replayed the graphs"):
            device_check.graphs_agree(config, images, steps=4, widths=widths)
