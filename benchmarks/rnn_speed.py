"""Speed of textrec.nn.GatedRNN against torch.nn.LSTM / GRU at CRNN shapes.

Times forward+backward ("train": T=26, batch 64, input 512, hidden 256, 2 layers,
bidirectional) and forward at batch 1 without gradients ("infer"). Runs of the models
alternate in one process and medians are reported, so slow phases of a shared machine hit
all models alike. The last line printed is one JSON object with the ratios (ours / torch).

    python benchmarks/rnn_speed.py                 # CPU, one thread
    python benchmarks/rnn_speed.py --device cuda   # GPU
    python benchmarks/rnn_speed.py --modes lstm --threads 2
    python benchmarks/rnn_speed.py --modes lstm --variants add-io-vstart-tanh,add-io-map   # ablation variants

`--whole-model CHECKPOINT` times batch-1 inference of the whole CRNN instead (backbone, recurrent layers,
head; no gradients), the checkpoint's architecture with its vanilla layer against each variant (random
weights: the time does not depend on them), on an input of the checkpoint's height and width.

`--variants` takes the variant names of benchmarks/refine_ablation.py (without the unit: it comes from
--modes); the default is one variant, --refine on every gate.

On CUDA every model runs its float32 products on TF32 tensor cores, as `textrec train` does
(`textrec.nn.tensor_core_matmuls`; cuDNN's kernel does by default); `--no-tf32` times plain float32 for all.
Training steps of our own kernel replay CUDA graphs there, as in `textrec train` (`textrec.nn.GraphedTraining`);
`--no-graphs` times them launched op by op. Vanilla layers run cuDNN there, as in training ("none (cuDNN)");
"none (own kernel)" is the same layer through textrec's kernel, and every LSTM of our kernel is timed twice:
each step's element-wise work as one Triton kernel (`textrec.nn.triton_steps`, the default on CUDA) and, in
the rows "... (torch ops)" (JSON keys "...-ops"), as torch ops.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
from torch import nn

from refine_ablation import VARIANT_DEFAULTS, layer_options, parse_variant  # the variant names (benchmarks/ is the script's folder)
from textrec.nn import GatedRNN, for_training, tensor_core_matmuls, triton_steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TorchOps(nn.Module):
    """A layer whose forward (and so its backward) runs each step's element-wise work as torch ops, not as
    the Triton step kernels (`textrec.nn.triton_steps`), which the same layer uses on CUDA otherwise."""

    def __init__(self, rnn: GatedRNN):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        before = os.environ.get("TEXTREC_TRITON_RNN")
        os.environ["TEXTREC_TRITON_RNN"] = "0"
        try:
            return self.rnn(x)
        finally:
            if before is None:
                del os.environ["TEXTREC_TRITON_RNN"]
            else:
                os.environ["TEXTREC_TRITON_RNN"] = before


def make_models(mode: str, args, device) -> dict[str, nn.Module]:
    """Torch reference, our vanilla copy of it, and our refined layer(s), all with the same shapes.

    On CUDA our vanilla copy runs torch's kernel (cuDNN), as training does; "vanilla-own" is the same layer
    through textrec's own kernel, and for the LSTM each own-kernel layer is timed once more as "<name>-ops",
    its steps' element-wise work as torch ops instead of the Triton kernels."""
    kw = dict(num_layers=args.layers, bidirectional=True)
    torch_cls = nn.LSTM if mode == "lstm" else nn.GRU  # MGU has no torch twin: compared with GRU
    models = {"torch": torch_cls(args.input, args.hidden, **kw)}
    if mode == "mgu":
        models["vanilla"] = GatedRNN("mgu", args.input, args.hidden, **kw)
    else:
        models["vanilla"] = GatedRNN.from_torch(models["torch"])
    if device.type == "cuda" and mode != "mgu":
        models["vanilla-own"] = GatedRNN.from_torch(models["torch"])
        models["vanilla-own"].use_torch_kernel = False
    for variant in args.variants:
        models[variant] = GatedRNN(mode, args.input, args.hidden, **layer_options(parse_variant(f"{mode}-{variant}")), **kw)
    if mode == "lstm" and triton_steps.applies(torch.zeros(1, device=device)):
        own = [k for k, m in models.items() if isinstance(m, GatedRNN) and not (m.torch_kernel_enabled() and device.type == "cuda")]
        models.update({f"{k}-ops": TorchOps(copy.deepcopy(models[k])) for k in own})
    models = {k: m.to(device) for k, m in models.items()}
    if not args.no_graphs:  # training steps of our own kernel as `textrec train` runs them (CUDA only)
        for model in models.values():
            args.graphs_installed |= for_training(getattr(model, "rnn", model), device) is not None
    return models


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


def whole_models(checkpoint: str, variants: list[str], device) -> tuple[dict[str, nn.Module], torch.Tensor]:
    """The checkpoint's CRNN with vanilla gates and with each variant, and a batch-1 input of its size."""
    import dataclasses

    from textrec.checkpoint import load_checkpoint
    from textrec.model import CRNN

    loaded = load_checkpoint(checkpoint)
    base = dataclasses.replace(loaded.model_config, **layer_options(VARIANT_DEFAULTS))
    models = {"vanilla": CRNN(base)}
    for variant in variants:
        models[variant] = CRNN(dataclasses.replace(base, **layer_options(parse_variant(f"{base.rnn}-{variant}"))))
    image = torch.randn(1, base.in_channels, loaded.preprocess.height, loaded.preprocess.width, device=device)
    return {k: m.to(device).eval() for k, m in models.items()}, image


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
    p.add_argument("--variants", default=None, help="comma-separated refined variants to time (default: --refine)")
    p.add_argument("--whole-model", metavar="CHECKPOINT", help="time batch-1 inference of this checkpoint's CRNN per variant")
    p.add_argument("--no-graphs", action="store_true",
                   help="CUDA: time our layers' training steps without CUDA graphs (textrec.nn.GraphedTraining)")
    p.add_argument("--no-tf32", action="store_true",
                   help="CUDA: plain float32 products for every model (cuDNN's too); by default all use TF32 as training does")
    args = p.parse_args()
    args.graphs_installed = False  # set by make_models: whether any layer replays CUDA graphs
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    with tensor_core_matmuls(args.device):
        run(args)


def row_name(kind: str, device: torch.device) -> str:
    """How the table names a model: the variant, with the kernel that computes it where that is not plain."""
    ops = kind.endswith("-ops")
    name = kind.removesuffix("-ops")
    if name == "vanilla":
        name = "none (cuDNN)" if device.type == "cuda" else "none"
    elif name == "vanilla-own":
        name = "none (own kernel)"
    return f"{name} (torch ops)" if ops else name


def run(args) -> None:
    args.variants = [v.strip() for v in (args.variants or args.refine).split(",") if v.strip()]

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train = torch.randn(args.steps, args.batch, args.input, device=device, requires_grad=True)
    x_infer = torch.randn(args.steps, 1, args.input, device=device)

    if args.whole_model:
        models, image = whole_models(args.whole_model, args.variants, device)
        infer = interleaved(models, time_infer, image, device, args.infer_repeats, warmup=5)
        print(f"whole CRNN of {args.whole_model}, input {tuple(image.shape)}, batch 1, no grad, median of "
              f"{args.infer_repeats}, threads={torch.get_num_threads() if device.type == 'cpu' else '-'}")
        print(f"{'recurrent layer':<28}{'infer ms':>10}{'/ vanilla':>11}")
        whole = {}
        for name, seconds in infer.items():
            print(f"{name:<28}{seconds * 1e3:>10.2f}{seconds / infer['vanilla']:>11.3f}")
            whole[f"whole_infer_ms_{name}"] = round(seconds * 1e3, 3)
            whole[f"whole_infer_ratio_{name}"] = round(seconds / infer["vanilla"], 3)
        print(json.dumps(dict(whole, device=str(device), torch=torch.__version__), sort_keys=True))
        return

    result: dict[str, object] = {}
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        models = make_models(mode, args, device)
        train = interleaved(models, time_train, x_train, device, args.train_repeats, warmup=2)
        for m in models.values():
            m.eval()
        infer = interleaved(models, time_infer, x_infer, device, args.infer_repeats, warmup=5)
        ref_name = "torch.nn." + ("LSTM" if mode == "lstm" else "GRU")
        for kind in models:
            name = ref_name if kind == "torch" else f"GatedRNN {mode} " + row_name(kind, device)
            rows.append((name, train[kind] * 1e3, infer[kind] * 1e3, train[kind] / train["torch"], infer[kind] / infer["torch"]))
            # The first variant is also reported as "refined" (the keys of this script's first version).
            for key in [kind] + (["refined"] if kind == args.variants[0] else []):
                if kind != "torch":
                    result[f"train_ratio_{key}_{mode}"] = round(train[kind] / train["torch"], 3)
                    result[f"infer_ratio_{key}_{mode}"] = round(infer[kind] / infer["torch"], 3)
                result[f"train_ms_{key}_{mode}"] = round(train[kind] * 1e3, 2)
                result[f"infer_ms_{key}_{mode}"] = round(infer[kind] * 1e3, 3)

    print(f"device={device} threads={torch.get_num_threads() if device.type == 'cpu' else '-'} torch={torch.__version__} "
          f"cpu={platform.processor() or platform.machine()}")
    print(f"train: T={args.steps} B={args.batch} in={args.input} hidden={args.hidden} layers={args.layers} bidirectional, "
          f"forward+backward, median of {args.train_repeats}; infer: batch 1, no grad, median of {args.infer_repeats}")
    print(f"{'model':<46}{'train ms':>10}{'infer ms':>10}{'train/torch':>13}{'infer/torch':>13}")
    for label, tr, inf, rt, ri in rows:
        print(f"{label:<46}{tr:>10.1f}{inf:>10.2f}{rt:>13.2f}{ri:>13.2f}")
    result.update(device=str(device), threads=torch.get_num_threads() if device.type == "cpu" else None,
                  refine=args.refine, torch=torch.__version__, tf32=device.type == "cuda" and not args.no_tf32,
                  graphs=args.graphs_installed)  # False where TEXTREC_CUDA_GRAPHS=0 kept them off
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
