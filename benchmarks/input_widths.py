"""How wide the training images are: the content width of each finished sample, as training makes it (issue 11,
item 2: keep-ratio variable-width batching).

Training pads every image to the model's input width (columns beyond the content repeat the last one). This
draws batches from `--train-data` exactly as `textrec train` does (the same loader and device stage, on the CPU),
and reports each sample's content width in model pixels: by source kind (synthetic, real), the share squeezed
to the full width, and the compute a width-bucketed batching could save: the mean of each sample's width rounded
up to a bucket, against the full width (the backbone's and the recurrent layers' work grow linearly with the
width). With `--pools`, also what `textrec train --width-buckets N` makes of the same batches: the share of the
full width's work when each N consecutive batches are sorted by width and dealt out again, each source group apart,
each batch cut to its widest sample (textrec/data/buckets.py; 1: each batch cut alone). The last line is one JSON object.

    python benchmarks/input_widths.py --config checkpoints/model2.toml --batches 40
    python benchmarks/input_widths.py --config checkpoints/model2.toml --batches 64 --batch-size 64 --pools 1 4 16 64
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tomllib

import torch

from textrec.charset import Charset
from textrec.data.buckets import WidthBuckets
from textrec.data.training import Batch, open_sources, split_batch, step_loader
from textrec.model.backbones import BACKBONES
from textrec.synth.pipeline import Finisher


def summary(widths: list[float], full: int, bucket: int) -> dict:
    if not widths:
        return {"samples": 0}
    deciles = statistics.quantiles(widths, n=10) if len(widths) > 1 else widths * 9
    bucketed = [min(full, math.ceil(w / bucket) * bucket) for w in widths]
    return {
        "samples": len(widths),
        "mean": round(statistics.mean(widths), 1),
        "deciles": [round(q, 1) for q in deciles],
        "at_full_width_percent": round(100 * sum(w >= full for w in widths) / len(widths), 1),
        "mean_over_full": round(statistics.mean(widths) / full, 3),
        f"bucketed_{bucket}_over_full": round(statistics.mean(bucketed) / full, 3),
    }


def pooled_share(batches: list[list[tuple[float, str, int]]], pool: int, full: int, output_length) -> float:
    """The work of width-bucketed batches against full-width ones, for batches of (width, label, source group):
    dealt out by `WidthBuckets` itself, on stand-in images of one pixel's height."""
    finished = []
    for batch in batches:
        lengths = torch.tensor([len(label) for _, label, _ in batch])
        finished.append((
            Batch(None, torch.zeros(int(lengths.sum()), dtype=torch.long), lengths, [label for _, label, _ in batch], [],
                  [group for _, _, group in batch]),
            (torch.zeros(len(batch), 1, 1, full), torch.tensor([width for width, _, _ in batch])),
        ))
    buckets = WidthBuckets(finished, pool, 0, output_length)
    for _ in buckets:
        pass
    return buckets.pixels / buckets.full_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a training recipe (TOML): its train_data, synth_fonts, charset, backbone, height, width")
    parser.add_argument("--train-data", nargs="+", help="instead of the recipe's")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bucket", type=int, default=32, help="bucket size in model pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pools", type=int, nargs="*", default=[], help="--width-buckets pool sizes to report")
    args = parser.parse_args()
    recipe = {}
    if args.config:
        with open(args.config, "rb") as handle:
            recipe = tomllib.load(handle)
    train_data = args.train_data or recipe.get("train_data") or ["synth"]
    height, width = recipe.get("height", 32), recipe.get("width", 100)
    charset = Charset.from_spec(str(recipe.get("charset", "36")))
    frames = BACKBONES[recipe.get("backbone", "vgg")][0].output_width(width)  # synthetic labels are fitted to them
    finisher = Finisher(height, width, args.seed, "cpu")
    fonts = recipe.get("synth_fonts") or None
    sources, shares = open_sources(train_data, charset, frames, args.seed, {"max_frames": frames, "fonts": fonts})
    loader = step_loader(sources, split_batch(args.batch_size, shares), charset, finisher, True, args.seed, 0, args.batches)
    kinds: dict[str, list[float]] = {"synthetic": [], "real": []}
    batches = []  # (model width, label, source group) of each sample, batch by batch
    for step, batch in enumerate(loader):
        model_widths = finisher.canvas(batch.raw, step).widths / finisher.scale
        # training cuts at whole model pixels (Finisher.model_input_and_widths)
        batches.append(list(zip(torch.ceil(model_widths).tolist(), batch.labels, batch.groups)))
        for model_width, real in zip(model_widths.tolist(), batch.raw.is_real.tolist()):
            kinds["real" if real else "synthetic"].append(model_width)
    result = {"train_data": train_data, "input": [height, width], "bucket": args.bucket}
    result.update({kind: summary(values, width, args.bucket) for kind, values in kinds.items()})
    result["all"] = summary(kinds["synthetic"] + kinds["real"], width, args.bucket)
    print(f"content widths at {height} x {width} px, {args.batches} batches of {args.batch_size}")
    for kind in ("synthetic", "real", "all"):
        row = result[kind]
        if row["samples"]:
            print(f"{kind:<10} {row['samples']:>6} samples, mean {row['mean']:>6.1f} px ({row['mean_over_full']:.2f} of "
                  f"{width}), squeezed to {width}: {row['at_full_width_percent']:.1f} %, "
                  f"{args.bucket}-px buckets: {row[f'bucketed_{args.bucket}_over_full']:.2f} of the full width's work")
    output_length = BACKBONES[recipe.get("backbone", "vgg")][0].output_width
    result["pools"] = {str(pool): round(pooled_share(batches, pool, width, output_length), 3) for pool in args.pools}
    for pool, share in result["pools"].items():
        print(f"--width-buckets {pool:>4} (batches of {args.batch_size}): {share:.3f} of the full width's work")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
