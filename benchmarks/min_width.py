"""Batch-1 accuracy of a checkpoint for each minimum input width (`Preprocess.min_width`): how to choose it.

    python benchmarks/min_width.py checkpoints/default.safetensors --data data/real_val
    python benchmarks/min_width.py CK --data data/real_val --widths 0,96,128,144,160 --json out.json

A model trained on inputs always padded to its full width reads a short word alone (dynamic width, batch 1, no
padding) worse than in a padded batch. For each width W the checkpoint's dynamic-width batches are padded to at
least W, every sample is read alone (batch 1, as `textrec predict` reads one image) and scored as `textrec eval`
scores it; the last row repeats the padded-batch reference (batch 64). Choose W on the validation split, then
`textrec export CK OUT --min-width W` (docs/model.md, card, "input"). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from textrec.data.lmdb_store import LmdbDataset
from textrec.evaluate import evaluate_dataset
from textrec.predict import Recognizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="LMDB to read (the validation split to choose)")
    parser.add_argument("--widths", default="0,64,96,128,144,160", help="comma-separated minimum widths in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu", orientation=False)
    base = recognizer.preprocess
    if not (base.dynamic_width and base.keep_ratio):
        raise SystemExit(f"{args.checkpoint}: pads every input to {base.width} px (no dynamic width): nothing to choose")
    dataset = LmdbDataset(args.data)
    rows = []
    print(f"{args.checkpoint} on {args.data} ({len(dataset)} samples), read alone (batch 1)")
    print(f"{'min_width':>10}{'word acc. %':>13}{'1-NED':>9}{'ms / image':>12}")
    for width in [int(w) for w in args.widths.split(",")]:
        recognizer.preprocess = dataclasses.replace(base, min_width=min(width, base.width))
        result = evaluate_dataset(recognizer, dataset, args.data, batch_size=1)
        rows.append({"min_width": width, "batch_size": 1, "accuracy": result.accuracy, "ned": result.ned,
                     "ms_per_image": result.ms_per_image})
        print(f"{width:>10}{result.accuracy:>13.2f}{result.ned:>9.4f}{result.ms_per_image:>12.2f}", flush=True)
    recognizer.preprocess = base
    result = evaluate_dataset(recognizer, dataset, args.data, batch_size=64)
    rows.append({"min_width": base.min_width, "batch_size": 64, "accuracy": result.accuracy, "ned": result.ned,
                 "ms_per_image": result.ms_per_image})
    print(f"{'batch 64':>10}{result.accuracy:>13.2f}{result.ned:>9.4f}{result.ms_per_image:>12.2f}")
    summary = {"checkpoint": args.checkpoint, "data": args.data, "rows": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
