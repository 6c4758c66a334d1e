"""Gate saturation and range of trained CRNNs on real images, gate by gate.

    python benchmarks/gate_stats.py CHECKPOINT [CHECKPOINT ...] --data data/real_val

For every sigmoid gate of the recurrent layers (both layers and directions pooled): the share of
sigmoid activations below 0.05 or above 0.95 (where σ' ≈ 0), and the range of the values the unit
uses (refined gates may leave (0, 1)). One JSON line per checkpoint.
"""

from __future__ import annotations

import argparse
import json

import torch

from textrec.data.lmdb_store import LmdbDataset
from textrec.nn import gate_stats, recording_gates
from textrec.predict import Recognizer


def checkpoint_gate_stats(path: str, images: list) -> dict[str, dict[str, float]]:
    recognizer = Recognizer.from_checkpoint(path, device="cpu")
    batch = recognizer.prepare(images)
    with torch.no_grad(), recording_gates(recognizer.model) as recorded:
        recognizer.model(batch)
    gates = recorded["sequence"]  # "l{layer}.{gate}" -> (sigmoid, value)
    names = sorted({key.split(".")[1] for key in gates})
    return {
        name: {k: round(v, 4) for k, v in gate_stats({k: v for k, v in gates.items() if k.endswith("." + name)}).items()}
        for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", required=True, help="LMDB of word images")
    parser.add_argument("--max-samples", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = LmdbDataset(args.data)
    images = [dataset.read_image(i)[0] for i in range(min(len(dataset), args.max_samples))]
    for path in args.checkpoints:
        print(json.dumps({"checkpoint": path, "samples": len(images), "gates": checkpoint_gate_stats(path, images)}))


if __name__ == "__main__":
    main()
