"""Recognition speed of a checkpoint on this machine, per backend, side by side: images per second at batch 1 and 32.

Times the model as `Recognizer.recognize` runs it (preprocessing, forward pass and greedy CTC decoding; not
file decoding) on decoded grayscale word images of an LMDB (or synthetic renders), after a warm-up. Backends:

    torch             the plain model in torch (`textrec predict --no-orientation`)
    torch-orientation what `textrec predict` runs by default: also reads upside-down and turned crops (docs/orientation.md)
    onnxruntime       the same model exported to ONNX (textrec.export.onnx_recognizer), run by onnxruntime
    onnxruntime-int8  that graph with int8 LSTM / matrix-product weights (onnxruntime's dynamic quantisation)

`--rapidocr` adds RapidOCR's PP-OCRv4 recogniser (`pip install rapidocr_onnxruntime`, a benchmark-only dependency
that ships the model in its wheel) on the same images, as RGB arrays, through its own preprocessing and decoding.
Every round times every backend once, in a rotating order, so a change in the machine's load (onnxruntime's speed
swings with it) reaches them all alike; the medians over the rounds are reported. `--accuracy` also scores each
backend on the whole LMDB (36-character protocol, batch 64 for the textrec backends; RapidOCR reads one at a time).

    python benchmarks/model_speed.py checkpoints/default.safetensors --data data/benchmarks/IC13_857 --threads 2 \\
        --backends torch,onnxruntime,onnxruntime-int8 --rapidocr --accuracy

The last line is one JSON object: {"batch1_images_per_second": ... (torch), "backends": {name: {...}}, ...}.
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
from textrec.metrics import Score, normalize_for_eval
from textrec.predict import Recognizer

BACKENDS = ("torch", "torch-orientation", "onnxruntime", "onnxruntime-int8")


def load_images(data: str | None, count: int | None):
    """(images, labels) of an LMDB (the first `count`; None: all), or `count` synthetic renders."""
    if data:
        dataset = LmdbDataset(data)
        samples = [dataset.read_image(i) for i in range(min(count or len(dataset), len(dataset)))]
        return [image for image, _ in samples], [label for _, label in samples]
    from textrec.synth.glyphs import GlyphSource
    from textrec.synth.writer import Renderer

    rendered = list(Renderer(GlyphSource(0, Charset.from_spec("36"))).render(count or 256))
    return [image for image, _ in rendered], [label for _, label in rendered]


class TextrecReader:
    """A textrec backend: images -> texts, in batches."""

    def __init__(self, recognizer: Recognizer):
        self.recognizer = recognizer

    def read(self, images, batch_size: int) -> list[str]:
        # What `predict` runs once the files are decoded: orientation where the recogniser has it, confidence.
        return [reading.text for reading in self.recognizer.read_grayscale(images, batch_size)]


class RapidOcrReader:
    """RapidOCR's PP-OCRv4 text recogniser alone (no detection, no angle classifier), on RGB word crops."""

    def __init__(self, threads: int):
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)
        self.recognizer = engine.text_rec

    @staticmethod
    def convert(images):
        import numpy as np

        return [np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]) for image in images]  # BGR, as cv2

    def read(self, images, batch_size: int) -> list[str]:
        self.recognizer.rec_batch_num = batch_size
        results, _ = self.recognizer(images)
        return [text for text, _ in results]


def build_readers(args) -> dict:
    readers = {}
    for name in args.backends:
        if name.startswith("torch"):
            recognizer = Recognizer.from_checkpoint(args.checkpoint, device="cpu", orientation=name == "torch-orientation")
        else:
            from textrec.export import onnx_recognizer

            recognizer = onnx_recognizer(args.checkpoint, int8=name.endswith("int8"), threads=torch.get_num_threads())
        if args.width != "checkpoint":
            recognizer.preprocess = dataclasses.replace(recognizer.preprocess, dynamic_width=args.width == "dynamic")
        readers[name] = TextrecReader(recognizer)
    if args.rapidocr:
        readers["rapidocr-ppocrv4"] = RapidOcrReader(torch.get_num_threads())
    return readers


def rate(reader, images, batch_size: int) -> float:
    start = time.perf_counter()
    if batch_size == 1:
        for image in images:
            reader.read([image], 1)
    else:
        for first in range(0, len(images), batch_size):
            reader.read(images[first : first + batch_size], batch_size)
    return len(images) / (time.perf_counter() - start)


def side_by_side(readers: dict, inputs: dict, batch_size: int, rounds: int) -> dict[str, float]:
    """Median images/s of each reader over `rounds` rounds; each round runs every reader once, in a rotating order."""
    names = list(readers)
    for name in names:  # warm-up
        readers[name].read(inputs[name][: 2 * batch_size], batch_size)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            rates[name].append(rate(readers[name], inputs[name], batch_size))
    return {name: round(statistics.median(values), 1) for name, values in rates.items()}


def accuracy(reader, images, labels, batch_size: int, reference: list[str] | None):
    texts = []
    for first in range(0, len(images), batch_size):
        texts.extend(reader.read(images[first : first + batch_size], batch_size))
    score = Score()
    for text, label in zip(texts, labels):
        wanted = normalize_for_eval(label)
        if wanted:
            score.add(normalize_for_eval(text), wanted)
    same = None if reference is None else sum(a == b for a, b in zip(texts, reference)) / len(texts)
    return texts, round(score.accuracy, 2), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", help="LMDB whose images to use (default: synthetic renders)")
    parser.add_argument("--count", type=int, default=256, help="images to time")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs every backend once)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of torch and onnxruntime (default: torch's)")
    parser.add_argument("--backends", default="torch-orientation", help=f"comma-separated, of: {', '.join(BACKENDS)}")
    parser.add_argument("--rapidocr", action="store_true", help="also time RapidOCR's PP-OCRv4 recogniser")
    parser.add_argument("--accuracy", action="store_true", help="also score each backend on the whole --data LMDB")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes to time")
    parser.add_argument(
        "--width", choices=("checkpoint", "fixed", "dynamic"), default="checkpoint",
        help="pad every input to the model width (fixed), each batch to its widest image (dynamic), or as the checkpoint says",
    )
    args = parser.parse_args()
    args.backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if args.accuracy and not args.data:
        parser.error("--accuracy needs --data (a labelled LMDB)")
    if args.threads:
        torch.set_num_threads(args.threads)
    readers = build_readers(args)
    images, labels = load_images(args.data, args.count)
    inputs = {name: RapidOcrReader.convert(images) if isinstance(reader, RapidOcrReader) else images
              for name, reader in readers.items()}
    result = {
        "checkpoint": args.checkpoint,
        "data": args.data or "synthetic",
        "images": len(images),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "backends": {name: {} for name in readers},
    }
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for name, value in side_by_side(readers, inputs, batch_size, args.rounds).items():
            result["backends"][name][f"batch{batch_size}_images_per_second"] = value
    if args.accuracy:
        all_images, all_labels = load_images(args.data, None)
        all_bgr = RapidOcrReader.convert(all_images) if args.rapidocr else None
        reference = None
        for name, reader in readers.items():
            rapid = isinstance(reader, RapidOcrReader)
            texts, acc, same = accuracy(reader, all_bgr if rapid else all_images, all_labels, 1 if rapid else 64, reference)
            reference = reference or texts
            entry = result["backends"][name]
            entry["word_accuracy_36"] = acc
            if same is not None and not rapid:
                entry[f"same_text_as_{next(iter(readers))}"] = round(same, 4)
    torch_entry = result["backends"].get("torch-orientation") or result["backends"].get("torch", {})
    for key in ("batch1_images_per_second", "batch32_images_per_second"):  # the keys of this script's first version
        if key in torch_entry:
            result[key] = torch_entry[key]
    print(f"{len(images)} images, {result['threads']} threads, {args.rounds} rounds (medians)")
    for name, entry in result["backends"].items():
        print(f"  {name:18s} " + ", ".join(f"{key}: {value}" for key, value in entry.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
