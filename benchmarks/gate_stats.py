"""Gate saturation and range of trained CRNNs on real images, gate by gate.

    python benchmarks/gate_stats.py CHECKPOINT [CHECKPOINT ...] --data data/real_val
    python benchmarks/gate_stats.py A.safetensors B.safetensors --labels none,add-io-vstart-tanh \
        --data data/real_val --histogram docs/img/refine_gate_histograms.png

For every sigmoid gate of the recurrent layers (both layers and directions pooled): the share of
sigmoid activations below 0.05 or above 0.95 (where σ' ≈ 0), and the range of the values the unit
uses (refined gates may leave (0, 1)). One JSON line per checkpoint.

`--histogram PNG` draws, per checkpoint, the distribution of the sigmoid activations of every gate
(the paper's "gate undertraining": mass piled at 0 and 1, where σ' vanishes) and of the input and
output gates' values as the unit uses them (σ for a vanilla gate, σ ◇ x̃ for a refined one).
"""

from __future__ import annotations

import argparse
import json
import math

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


HISTOGRAM_BINS = 40
VALUE_RANGE = (-2.0, 3.0)  # refined i/o values outside it are counted in the end bins
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def gate_histograms(path: str, images: list) -> dict[str, list[float]]:
    """Shares per bin: "sigmoid" over [0, 1] (every sigmoid gate), "io_value" over VALUE_RANGE (gates i and o)."""
    recognizer = Recognizer.from_checkpoint(path, device="cpu")
    with torch.no_grad(), recording_gates(recognizer.model) as recorded:
        recognizer.model(recognizer.prepare(images))
    gates = recorded["sequence"]
    sigmoid = torch.cat([s.flatten() for s, _ in gates.values()]).float()
    io = torch.cat([v.flatten() for key, (_, v) in gates.items() if key.split(".")[1] in ("i", "o")]).float()
    low, high = VALUE_RANGE
    return {
        "sigmoid": (torch.histc(sigmoid, HISTOGRAM_BINS, 0.0, 1.0) / sigmoid.numel()).tolist(),
        "io_value": (torch.histc(io.clamp(low, high), HISTOGRAM_BINS, low, high) / io.numel()).tolist(),
    }


def draw_histograms(histograms: dict[str, dict[str, list[float]]], path: str, samples: int) -> None:
    """Two panels of frequency polygons (log share per bin), one line per checkpoint."""
    from PIL import Image, ImageDraw, ImageFont

    panels = [("sigmoid", "sigmoid activations, all gates", (0.0, 1.0)),
              ("io_value", "input and output gate values (as used)", VALUE_RANGE)]
    pw, ph, ml, mr, mt, mb = 440, 300, 56, 14, 56, 46
    legend_h = 18 * ((len(histograms) + 1) // 2) + 8
    img = Image.new("RGB", (pw * len(panels), ph + 30 + legend_h), "white")
    draw = ImageDraw.Draw(img)
    font, big = ImageFont.load_default(size=13), ImageFont.load_default(size=15)
    draw.text((8, 6), f"Gate distributions of trained CRNNs on {samples} validation images (share per bin, log)",
              fill="black", font=big)
    lo, hi = -5, 0  # 1e-5 .. 1 of the values per bin
    for col, (key, label, (start, stop)) in enumerate(panels):
        x0, y0, x1, y1 = col * pw + ml, mt, (col + 1) * pw - mr, ph + 30 - mb
        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text((x0, y0 - 18), label, fill="black", font=big)

        def sx(v):
            return x0 + (x1 - x0) * (v - start) / (stop - start)

        def sy(share):
            share = min(max(share, 10.0**lo), 1.0)
            return y1 - (y1 - y0) * (math.log10(share) - lo) / (hi - lo)

        for exponent in range(lo, hi + 1):
            draw.line((x0, sy(10.0**exponent), x1, sy(10.0**exponent)), fill=(225, 225, 225))
            draw.text((x0 - 48, sy(10.0**exponent) - 7), f"1e{exponent}", fill="black", font=font)
        for k in range(6):
            v = start + (stop - start) * k / 5
            draw.text((sx(v) - draw.textlength(f"{v:g}", font=font) / 2, y1 + 4), f"{v:g}", fill="black", font=font)
        for edge in (0.0, 1.0):  # the sigmoid's own range, on the value panel
            if start < edge < stop:
                draw.line((sx(edge), y0, sx(edge), y1), fill=(160, 160, 160))
        width = (stop - start) / HISTOGRAM_BINS
        for number, shares in enumerate(histograms.values()):
            points = [(sx(start + (b + 0.5) * width), sy(share)) for b, share in enumerate(shares[key])]
            draw.line(points, fill=PALETTE[number % len(PALETTE)], width=2)
    for number, name in enumerate(histograms):
        lx, ly = 12 + (number % 2) * (img.width // 2), ph + 30 + 4 + 18 * (number // 2)
        draw.line((lx, ly + 7, lx + 18, ly + 7), fill=PALETTE[number % len(PALETTE)], width=3)
        draw.text((lx + 24, ly), name, fill="black", font=font)
    img.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", required=True, help="LMDB of word images")
    parser.add_argument("--max-samples", type=int, default=500)
    parser.add_argument("--histogram", metavar="PNG", help="also draw the gate distributions of every checkpoint")
    parser.add_argument("--labels", help="comma-separated names of the checkpoints in the plot (default: their paths)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = LmdbDataset(args.data)
    images = [dataset.read_image(i)[0] for i in range(min(len(dataset), args.max_samples))]
    labels = args.labels.split(",") if args.labels else args.checkpoints
    if len(labels) != len(args.checkpoints):
        parser.error(f"--labels names {len(labels)} checkpoints, but {len(args.checkpoints)} are given")
    histograms = {}
    for label, path in zip(labels, args.checkpoints):
        record = {"checkpoint": path, "samples": len(images), "gates": checkpoint_gate_stats(path, images)}
        if args.histogram:
            histograms[label] = record["histograms"] = gate_histograms(path, images)
        print(json.dumps(record))
    if args.histogram:
        draw_histograms(histograms, args.histogram, len(images))


if __name__ == "__main__":
    main()
