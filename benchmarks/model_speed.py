"""Recognition speed of a checkpoint on this machine: images per second at batch 1 and batch 32.

Times `Recognizer.recognize` on decoded grayscale word images (preprocessing, forward pass and CTC
decoding; not file decoding), after a warm-up, with the images of an LMDB or synthetic renders.

    python benchmarks/model_speed.py checkpoints/default.safetensors [--data data/benchmarks/IC13_857] [--threads 2] [--width fixed|dynamic]

The last line is one JSON object: {"batch1_images_per_second": ..., "batch32_images_per_second": ..., ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from textrec.charset import Charset
from textrec.data.lmdb_store import LmdbDataset
from textrec.predict import Recognizer


def load_images(data: str | None, count: int):
    if data:
        dataset = LmdbDataset(data)
        return [dataset.read_image(i)[0] for i in range(min(count, len(dataset)))]
    from textrec.synth.glyphs import GlyphSource
    from textrec.synth.writer import Renderer

    return [image for image, _ in Renderer(GlyphSource(0, Charset.from_spec("36"))).render(count)]


def images_per_second(recognizer: Recognizer, images, batch_size: int, repeats: int) -> float:
    recognizer.recognize(images[: batch_size * 2], batch_size)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        recognizer.recognize(images, batch_size)
        rates.append(len(images) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", help="LMDB whose images to use (default: synthetic renders)")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--width", choices=("checkpoint", "fixed", "dynamic"), default="checkpoint",
        help="pad every input to the model width (fixed), each batch to its widest image (dynamic), or as the checkpoint says",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu")
    if args.width != "checkpoint":
        recognizer.preprocess = dataclasses.replace(recognizer.preprocess, dynamic_width=args.width == "dynamic")
    images = load_images(args.data, args.count)
    result = {
        "checkpoint": args.checkpoint,
        "parameters": sum(p.numel() for p in recognizer.model.parameters()),
        "threads": torch.get_num_threads(),
        "dynamic_width": recognizer.preprocess.dynamic_width,
        "batch1_images_per_second": round(images_per_second(recognizer, images, 1, args.repeats), 1),
        "batch32_images_per_second": round(images_per_second(recognizer, images, 32, args.repeats), 1),
    }
    print(f"parameters: {result['parameters'] / 1e6:.2f} M, threads: {result['threads']}")
    print(f"batch 1:  {result['batch1_images_per_second']:.1f} images/s")
    print(f"batch 32: {result['batch32_images_per_second']:.1f} images/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
