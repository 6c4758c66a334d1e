"""Speed of textrec.nn.GatedRNN against torch.nn.LSTM / GRU at CRNN shapes.

Times forward+backward ("train": T=26, batch 64, input 512, hidden 256, 2 layers,
bidirectional) and forward at batch 1 without gradients ("infer"). Runs of the models
alternate in one process and medians are reported, so slow phases of a shared machine hit
all models alike. The last line printed is one JSON object with the ratios (ours / torch).

    python benchmarks/rnn_speed.py                 # CPU, one thread
    python benchmarks/rnn_speed.py --device cuda   # GPU
    python benchmarks/rnn_speed.py --modes lstm --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from textrec.nn import GatedRNN


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_models(mode: str, args, device) -> dict[str, nn.Module]:
    """Torch reference, our vanilla copy of it, and our refined layer, all with the same shapes."""
    kw = dict(num_layers=args.layers, bidirectional=True)
    torch_cls = nn.LSTM if mode == "lstm" else nn.GRU  # MGU has no torch twin: compared with GRU
    models = {"torch": torch_cls(args.input, args.hidden, **kw)}
    if mode == "mgu":
        models["vanilla"] = GatedRNN("mgu", args.input, args.hidden, **kw)
    else:
        models["vanilla"] = GatedRNN.from_torch(models["torch"])
    models["refined"] = GatedRNN(mode, args.input, args.hidden, refine=args.refine, **kw)
    return {k: m.to(device) for k, m in models.items()}


def time_train(model: nn.Module, x: torch.Tensor, device) -> float:
    sync(device)
    start = time.perf_counter()
    out, _ = model(x)
    out.sum().backward()
    sync(device)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    x.grad = None
    return elapsed


def time_infer(model: nn.Module, x: torch.Tensor, device) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    sync(device)
    return time.perf_counter() - start


def interleaved(models: dict[str, nn.Module], fn, x, device, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call; models alternate, in a rotating order, every repeat."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t = fn(models[n], x, device)
            if r >= warmup:
                times[n].append(t)
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier on a shared machine)")
    p.add_argument("--modes", default="lstm,gru,mgu", help="comma-separated: lstm,gru,mgu")
    p.add_argument("--refine", default="add", choices=["add", "mul"], help="refinement of the refined model")
    p.add_argument("--steps", type=int, default=26, help="sequence length T")
    p.add_argument("--batch", type=int, default=64, help="training batch")
    p.add_argument("--input", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--train-repeats", type=int, default=15)
    p.add_argument("--infer-repeats", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train = torch.randn(args.steps, args.batch, args.input, device=device, requires_grad=True)
    x_infer = torch.randn(args.steps, 1, args.input, device=device)

    result: dict[str, object] = {}
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        models = make_models(mode, args, device)
        train = interleaved(models, time_train, x_train, device, args.train_repeats, warmup=2)
        for m in models.values():
            m.eval()
        infer = interleaved(models, time_infer, x_infer, device, args.infer_repeats, warmup=5)
        ref_name = "torch.nn." + ("LSTM" if mode == "lstm" else "GRU")
        for kind in ("torch", "vanilla", "refined"):
            label = ref_name if kind == "torch" else f"GatedRNN {mode} " + ("none" if kind == "vanilla" else args.refine)
            rows.append((label, train[kind] * 1e3, infer[kind] * 1e3, train[kind] / train["torch"], infer[kind] / infer["torch"]))
            if kind != "torch":
                result[f"train_ratio_{kind}_{mode}"] = round(train[kind] / train["torch"], 3)
                result[f"infer_ratio_{kind}_{mode}"] = round(infer[kind] / infer["torch"], 3)
            result[f"train_ms_{kind}_{mode}"] = round(train[kind] * 1e3, 2)
            result[f"infer_ms_{kind}_{mode}"] = round(infer[kind] * 1e3, 3)

    print(f"device={device} threads={torch.get_num_threads() if device.type == 'cpu' else '-'} torch={torch.__version__} "
          f"cpu={platform.processor() or platform.machine()}")
    print(f"train: T={args.steps} B={args.batch} in={args.input} hidden={args.hidden} layers={args.layers} bidirectional, "
          f"forward+backward, median of {args.train_repeats}; infer: batch 1, no grad, median of {args.infer_repeats}")
    print(f"{'model':<24}{'train ms':>10}{'infer ms':>10}{'train/torch':>13}{'infer/torch':>13}")
    for label, tr, inf, rt, ri in rows:
        print(f"{label:<24}{tr:>10.1f}{inf:>10.2f}{rt:>13.2f}{ri:>13.2f}")
    result.update(device=str(device), threads=torch.get_num_threads() if device.type == "cpu" else None,
                  refine=args.refine, torch=torch.__version__)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
