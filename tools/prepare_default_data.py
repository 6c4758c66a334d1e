"""Prepare the data of the shipped model's recipes (checkpoints/default.toml and checkpoints/cpu.toml).

    python tools/prepare_default_data.py --shared ../shared/data --fonts FONT_DIR [FONT_DIR ...]

Writes, under data/ (ignored by git: the images are third-party):
  real_train/NAME      ../shared/data/real_train/NAME minus the validation split (cpu.toml)
  real_val             the validation split: every 20th line of each gt file, from the 8th
  gpu/real_train/NAME  compact copies for the GPU machine, whose transfers are capped at 64 MiB:
  gpu/real_val         grayscale, at most 64 px high, JPEG quality 90 (the model sees 32 px)
  gpu/fonts            the font files found in FONT_DIRs, minus symbol fonts, cut down to printable
                       ASCII with fontTools when it is installed (else copied whole)
IC13 is not touched: it is for reporting only.
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textrec.data.lmdb_store import LmdbDataset, LmdbWriter, create_lmdb  # noqa: E402

REAL_TRAIN = ("IIIT5K_train", "IC15_train", "SVT_train")
SYMBOL_FONTS = ("D050000L", "StandardSymbols", "MathTeX")
COMPACT_HEIGHT = 64


def is_validation_line(index: int) -> bool:
    return index % 20 == 7


def split_real_train(shared: Path, data: Path) -> None:
    val_lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in REAL_TRAIN:
            folder = shared / "real_train" / name
            # Case and punctuation as printed where a re-annotation has them (SVT's gt.txt is upper case only).
            gt = folder / "gt_case.txt" if (folder / "gt_case.txt").is_file() else folder / "gt.txt"
            lines = gt.read_text(encoding="utf-8").splitlines()
            train_gt = Path(tmp) / f"{name}.txt"
            train_gt.write_text("\n".join(l for i, l in enumerate(lines) if not is_validation_line(i)) + "\n", encoding="utf-8")
            create_lmdb(train_gt, data / "real_train" / name, root=folder)
            val_lines += [f"{folder.resolve()}/{l}" for i, l in enumerate(lines) if is_validation_line(i)]
        val_gt = Path(tmp) / "val.txt"
        val_gt.write_text("\n".join(val_lines) + "\n", encoding="utf-8")
        create_lmdb(val_gt, data / "real_val", root="/")


def compact_lmdb(source: Path, target: Path) -> int:
    dataset = LmdbDataset(source)
    with LmdbWriter(target) as writer:
        for index in range(len(dataset)):
            image, label = dataset.read_image(index)  # decoded as training decodes it: grayscale, EXIF-rotated
            if image.height > COMPACT_HEIGHT:
                width = max(1, round(image.width * COMPACT_HEIGHT / image.height))
                image = image.resize((width, COMPACT_HEIGHT), Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            writer.add(buffer.getvalue(), label)
    return len(dataset)


def collect_fonts(folders: list[Path], target: Path) -> int:
    try:
        from fontTools import subset
    except ImportError:
        subset = None
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # its notes on old timestamps are noise here
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for folder in folders for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    written = set()
    for path in files:
        if any(hint in path.name for hint in SYMBOL_FONTS) or path.name in written:
            continue
        if subset is None:
            shutil.copyfile(path, target / path.name)
        else:
            options = subset.Options()
            options.hinting = False
            options.layout_features = ["kern", "liga"]
            options.name_IDs = ["*"]
            options.notdef_outline = True
            font = subset.load_font(str(path), options)
            subsetter = subset.Subsetter(options)
            subsetter.populate(unicodes=range(0x20, 0x7F))
            subsetter.subset(font)
            subset.save_font(font, str(target / path.name), options)
        written.add(path.name)
    return len(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="folder holding real_train/")
    parser.add_argument("--data", type=Path, default=Path("data"), help="data root to write into")
    parser.add_argument("--fonts", type=Path, nargs="*", default=[], help="font folders for data/gpu/fonts")
    args = parser.parse_args()
    if not (args.data / "real_val").exists():
        split_real_train(args.shared, args.data)
    for name in REAL_TRAIN:
        count = compact_lmdb(args.data / "real_train" / name, args.data / "gpu" / "real_train" / name)
        print(f"{name}: {count} compact records")
    print(f"real_val: {compact_lmdb(args.data / 'real_val', args.data / 'gpu' / 'real_val')} compact records")
    if args.fonts:
        print(f"fonts: {collect_fonts(args.fonts, args.data / 'gpu' / 'fonts')} files")


if __name__ == "__main__":
    main()
