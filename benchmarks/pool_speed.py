"""CPU inference with the backbone's strided max pooling against torch's max-pool kernel, side by side.

`textrec.model.backbones.MaxPool` reads 2x2 max pools as maxima of strided views when no gradient is needed on
the CPU. This times each pool of a checkpoint's backbone both ways at the input of a read, then the whole model
at batch 1 and batch 32 both ways (the same weights; the kernel row patches `MaxPool.forward` back to
`nn.MaxPool2d.forward`). The two ways alternate and medians are reported, so a change in the machine's load
reaches both alike; the outputs are checked equal. The last line is one JSON object.

    python benchmarks/pool_speed.py checkpoints/default.safetensors --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch import nn

from textrec.checkpoint import load_checkpoint
from textrec.model.backbones import MaxPool


@contextlib.contextmanager
def kernel_pools():
    """Every MaxPool runs torch's kernel, as before the strided path."""
    fast = MaxPool.forward
    MaxPool.forward = nn.MaxPool2d.forward
    try:
        yield
    finally:
        MaxPool.forward = fast


def side_by_side(run, repeats: int) -> tuple[float, float]:
    """Median seconds of `run()` with the strided pools and with torch's kernel, alternating."""
    times = {"strided": [], "kernel": []}
    for turn in range(repeats + 2):
        for way in ("strided", "kernel") if turn % 2 == 0 else ("kernel", "strided"):
            with kernel_pools() if way == "kernel" else contextlib.nullcontext():
                start = time.perf_counter()
                run()
                if turn >= 2:  # the first two turns warm up
                    times[way].append(time.perf_counter() - start)
    return statistics.median(times["strided"]), statistics.median(times["kernel"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--width", type=int, default=128, help="input width (the shipped model's minimum: 128)")
    parser.add_argument("--repeats", type=int, default=100, help="turns at batch 1 (a tenth of them at batch 32)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    model = loaded.build_model().eval()
    height, channels = loaded.preprocess.height, loaded.model_config.in_channels
    result = {"checkpoint": args.checkpoint, "threads": args.threads, "width": args.width, "pools": [], "model": {}}
    print(f"{args.threads} thread(s), input width {args.width}, medians; ratio = strided / kernel")
    print(f"{'':34} {'strided ms':>10} {'kernel ms':>10} {'ratio':>6}")
    with torch.inference_mode():
        x = torch.randn(1, channels, height, args.width)
        for layer in model.backbone.features:
            if isinstance(layer, MaxPool):
                shape = tuple(x.shape)
                strided, kernel = side_by_side(lambda: layer(x), args.repeats)
                print(f"{'pool ' + str(shape):34} {strided * 1e3:10.3f} {kernel * 1e3:10.3f} {strided / kernel:6.2f}")
                result["pools"].append({"input": list(shape), "strided_ms": strided * 1e3, "kernel_ms": kernel * 1e3})
            x = layer(x)
        for batch, repeats in ((1, args.repeats), (32, max(3, args.repeats // 10))):
            images = torch.randn(batch, channels, height, args.width)
            with kernel_pools():
                expected = model(images)
            assert torch.equal(model(images), expected), "the strided pools changed the model's output"
            strided, kernel = side_by_side(lambda: model(images), repeats)
            print(f"{f'whole model, batch {batch}':34} {strided * 1e3:10.3f} {kernel * 1e3:10.3f} {strided / kernel:6.2f}"
                  f"   ({batch / strided:.0f} vs {batch / kernel:.0f} images/s)")
            result["model"][f"batch{batch}"] = {"strided_ms": strided * 1e3, "kernel_ms": kernel * 1e3}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
