"""How well `Recognizer.read` finds the way up of a crop, and what it costs (issue 13, item 2).

Every sample of each LMDB is read turned by 0, 90, 180 and 270 degrees (once), keeping each read's orientation
probe logit (the checkpoint's probe, on the features of that very read). From those the script replays
`Orientation` exactly as `Recognizer.read_grayscale` applies it (the same `is_tall`, `may_flip` and `choose`),
for crops given upright, upside down and turned by 90 degrees either way, over a grid of its settings, and
prints per setting: word accuracy (36-character protocol) for each way the crop was given, and the recognizer
reads per crop it costs. The first row is orientation off.

Pick the settings on the validation split (first --data), report them on a benchmark:

    python benchmarks/orientation.py --data data/real_val --data data/benchmarks/IC13_857 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textrec.checkpoint import shipped_checkpoint  # noqa: E402
from textrec.data.images import open_image  # noqa: E402
from textrec.data.lmdb_store import LmdbDataset  # noqa: E402
from textrec.metrics import normalize_for_eval  # noqa: E402
from textrec.predict import _TURNS, Orientation, Recognizer  # noqa: E402

GIVEN = (0, 180, 90, 270)  # how the crop reaches the recognizer: turned by this much from upright (counter-clockwise)


def read_all_turns(recognizer: Recognizer, path: str) -> list[dict]:
    """Per sample: its label, upright size, and (read, probe logit) at each total turn."""
    dataset = LmdbDataset(path)
    samples = [(open_image(blob, dataset.where(i)), label) for i, (blob, label) in enumerate(map(dataset.read, range(len(dataset))))]
    out = [{"label": label, "size": image.size, "reads": {}} for image, label in samples]
    for turn in (0, 90, 180, 270):
        images = [image if turn == 0 else image.transpose(_TURNS[turn]) for image, _ in samples]
        for record, pair in zip(out, recognizer.recognize_with_logits(images, batch_size=64)):
            record["reads"][turn] = pair
    return out


def replay(policy: Orientation | None, samples: list[dict], given: int) -> tuple[float, float]:
    """(accuracy %, recognizer reads per crop) when every crop is given turned by `given` degrees."""
    right = reads = 0
    for sample in samples:
        width, height = sample["size"]
        size = (height, width) if given in (90, 270) else (width, height)
        at = lambda turn: sample["reads"][(given + turn) % 360]  # noqa: E731  the read of the crop turned by `turn`
        if policy is None:
            best = (0, at(0)[0])
            reads += 1
        else:
            candidates = {0: at(0), **({90: at(90)} if policy.is_tall(size) else {})}
            flipped = {t: at(t + 180)[0] for t, (read, logit) in candidates.items() if policy.may_flip(read, logit, t)}
            best = policy.choose(candidates, flipped)
            reads += len(candidates) + len(flipped)
        right += normalize_for_eval(best[1].text, "36") == normalize_for_eval(sample["label"], "36")
    return 100.0 * right / len(samples), reads / len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped model")
    parser.add_argument("--data", action="append", required=True, help="an LMDB (repeat)")
    parser.add_argument("--weight", default="0,0.25,0.5,1,2")
    parser.add_argument("--bias", default="0,0.5,1,1.5,2,3")
    parser.add_argument("--tall-ratio", default="1.5")
    parser.add_argument("--margin", default="-1,0,1")
    parser.add_argument("--tall-bias", default="0")
    parser.add_argument("--top", type=int, default=12, help="settings shown per data set")
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    args = parser.parse_args()
    recognizer = Recognizer.from_checkpoint(args.checkpoint or shipped_checkpoint(), device="cpu", orientation=False)
    grid = [None] + [
        Orientation(*map(float, values))
        for values in itertools.product(*(v.split(",") for v in (args.weight, args.bias, args.tall_ratio, args.margin, args.tall_bias)))
    ]
    rows = []
    for path in args.data:
        samples = read_all_turns(recognizer, path)
        tall = sum(1 for s in samples if s["size"][1] >= 1.5 * s["size"][0])
        print(f"\n{path}: {len(samples)} samples, {tall} of them tall (h >= 1.5 w) when upright")
        table = []
        for policy in grid:
            figures = {g: replay(policy, samples, g) for g in GIVEN}
            table.append((policy, figures))
            rows.append({
                "data": path, "policy": None if policy is None else vars(policy),
                "accuracy": {str(g): figures[g][0] for g in GIVEN}, "reads_per_crop": {str(g): figures[g][1] for g in GIVEN},
            })
        # Shown: orientation off, the defaults, and the best --top settings by mean accuracy over the four ways.
        shown = [table[0]] + [t for t in table[1:] if t[0] == Orientation()]
        shown += sorted(table[1:], key=lambda t: -sum(a for a, _ in t[1].values()))[: args.top]
        print("weight bias tall_ratio margin tall_bias | " + " | ".join(f"given {g:>3}" for g in GIVEN) + " | reads/crop (given 0, 180)")
        for policy, figures in shown:
            name = "off" if policy is None else (
                f"{policy.weight:.2f} {policy.bias:.1f} {policy.tall_ratio:.1f} {policy.margin:.1f} {policy.tall_bias:.1f}"
                + (" (default)" if policy == Orientation() else "")
            )
            print(f"{name:>36} | " + " | ".join(f"{figures[g][0]:9.2f}" for g in GIVEN)
                  + f" | {figures[0][1]:.2f}, {figures[180][1]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
