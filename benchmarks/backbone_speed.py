"""Batch-1 CPU inference of whole CRNNs that differ only in their backbone, side by side (issue 11, item 3).

Takes a checkpoint's architecture (charset, recurrent layers, input size) and swaps in each backbone given as
NAME:WIDTHS; the first row is the checkpoint's own backbone. The weights are random (the time does not depend
on them). Models alternate in a rotating order
and the medians are reported, so a change in the machine's load reaches them all alike; the last line is one
JSON object.

    python benchmarks/backbone_speed.py checkpoints/default.safetensors \\
        --backbones resnet:16,32,64,128 resnet:24,48,96,192 resnet:64,128,256,256 resnet:128,256,512,512
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--backbones", nargs="+", required=True, help="NAME:WIDTHS, e.g. resnet:16,32,64,128")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    own = loaded.model_config
    models = {}
    for spec in [f"{own.backbone}:{','.join(map(str, own.channels))}", *args.backbones]:
        name, widths = parse_backbone(spec)
        config = dataclasses.replace(loaded.model_config, backbone=name, channels=widths)
        models[spec] = CRNN(config).eval()
    image = torch.randn(1, loaded.model_config.in_channels, loaded.preprocess.height, loaded.preprocess.width)
    times: dict[str, list[float]] = {spec: [] for spec in models}
    names = list(models)
    with torch.no_grad():
        for model in models.values():  # warm-up
            model(image)
        for turn in range(args.repeats):
            for spec in names[turn % len(names):] + names[: turn % len(names)]:
                start = time.perf_counter()
                models[spec](image)
                times[spec].append(time.perf_counter() - start)
    first = statistics.median(times[names[0]])
    result = {"checkpoint": args.checkpoint, "input": list(image.shape), "threads": args.threads, "models": {}}
    print(f"batch 1, input {tuple(image.shape)}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'backbone':<36}{'params (M)':>11}{'ms':>8}{'/ first':>9}")
    for spec, model in models.items():
        ms = statistics.median(times[spec]) * 1e3
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{spec:<36}{params:>11.2f}{ms:>8.2f}{ms / (first * 1e3):>9.2f}")
        result["models"][spec] = {"params_millions": round(params, 2), "ms": round(ms, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
