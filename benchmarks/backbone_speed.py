"""Batch-1 CPU inference of whole CRNNs that differ only in their backbone or input size, side by side (issue 11,
items 2 and 3).

Takes a checkpoint's architecture (charset, recurrent layers, input size) and swaps in each backbone given as
NAME:WIDTHS (at the checkpoint's input), then each input size given as HEIGHTxWIDTH (with the checkpoint's
backbone; a wider input also means more CTC frames for the recurrent layers); the first row is the checkpoint's
own. The weights are random (the time does not depend on them). Models alternate in a rotating order and the
medians are reported, so a change in the machine's load reaches them all alike; the last line is one JSON object.

    python benchmarks/backbone_speed.py checkpoints/default.safetensors \\
        --backbones resnet:16,32,64,128 resnet:24,48,96,192 resnet:64,128,256,256 resnet:128,256,512,512
    python benchmarks/backbone_speed.py checkpoints/default.safetensors --inputs 40x200 48x240
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from textrec.checkpoint import load_checkpoint
from textrec.model import CRNN


def parse_backbone(spec: str) -> tuple[str, tuple[int, ...]]:
    name, _, widths = spec.partition(":")
    return name, tuple(int(w) for w in widths.split(",")) if widths else ()


def parse_input(spec: str) -> tuple[int, int]:
    height, _, width = spec.lower().partition("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--backbones", nargs="+", default=[], help="NAME:WIDTHS, e.g. resnet:16,32,64,128")
    parser.add_argument("--inputs", nargs="+", default=[], help="HEIGHTxWIDTH with the checkpoint's backbone, e.g. 48x240")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    own = loaded.model_config
    own_backbone = f"{own.backbone}:{','.join(map(str, own.channels))}"
    own_input = (loaded.preprocess.height, loaded.preprocess.width)
    rows = [(own_backbone, own_input)]
    rows += [(spec, own_input) for spec in args.backbones] + [(own_backbone, parse_input(s)) for s in args.inputs]
    models, images = {}, {}
    for spec, (height, width) in rows:
        name, widths = parse_backbone(spec)
        key = f"{spec} {height}x{width}"
        models[key] = CRNN(dataclasses.replace(own, backbone=name, channels=widths)).eval()
        images[key] = torch.randn(1, own.in_channels, height, width)
    times: dict[str, list[float]] = {key: [] for key in models}
    names = list(models)
    with torch.no_grad():
        for key, model in models.items():  # warm-up
            model(images[key])
        for turn in range(args.repeats):
            for key in names[turn % len(names):] + names[: turn % len(names)]:
                start = time.perf_counter()
                models[key](images[key])
                times[key].append(time.perf_counter() - start)
    first = statistics.median(times[names[0]])
    result = {"checkpoint": args.checkpoint, "threads": args.threads, "models": {}}
    print(f"batch 1, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'backbone, input':<44}{'frames':>7}{'params (M)':>11}{'ms':>8}{'/ first':>9}")
    for key, model in models.items():
        ms = statistics.median(times[key]) * 1e3
        params = sum(p.numel() for p in model.parameters()) / 1e6
        frames = model.output_length(images[key].shape[-1])
        print(f"{key:<44}{frames:>7}{params:>11.2f}{ms:>8.2f}{ms / (first * 1e3):>9.2f}")
        result["models"][key] = {"params_millions": round(params, 2), "ms": round(ms, 2), "frames": frames}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
