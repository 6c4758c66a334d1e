"""Per-sample lexicons where a benchmark ships none: a proxy of SVT's 50-word lexicons (docs/evaluation.md).

    python benchmarks/lexicon_proxy.py ../shared/data/benchmarks/IC13/gt_857.txt /tmp/ic13_lex50.txt
    textrec create-lmdb /tmp/ic13_lex50.txt /tmp/IC13_857_lex50 --root ../shared/data/benchmarks/IC13 --lexicons
    textrec eval --data /tmp/IC13_857_lex50 --lexicon per-sample

Writes the gt file again with a third column: each sample's true word plus `--size - 1` words drawn at random
(seeded) from the built-in 50,000-word English list, none equal to the true word ignoring case. SVT's lexicons
hold the true word and 49 others too, but theirs are other words from the same image and street (harder); so
accuracies on this proxy are not SVT-50 figures and are reported as "proxy". Also writes, with `--global-out`,
the 50,000 words plus every test word (the "50k" lexicon setting of the CRNN paper's IC03 figures, where the
test words are part of the dictionary).
"""

from __future__ import annotations

import argparse
import random

from textrec.metrics import normalize_for_eval
from textrec.synth.text import read_word_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gt_file")
    parser.add_argument("output")
    parser.add_argument("--size", type=int, default=50, help="words per lexicon, the true word included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--global-out", help="also write the 50k list plus the test words here, one a line")
    args = parser.parse_args()
    words = [word for word, _ in read_word_lines(None)[0]]
    rng = random.Random(args.seed)
    lines, labels = [], []
    with open(args.gt_file, encoding="utf-8-sig") as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            path, label = line.split("\t", 1)
            key = normalize_for_eval(label)
            others = []
            while len(others) < args.size - 1:
                word = rng.choice(words)
                if normalize_for_eval(word) != key and word not in others:
                    others.append(word)
            lexicon = [label, *others]
            rng.shuffle(lexicon)  # the true word is not always first (ties go to the earlier word)
            lines.append(f"{path}\t{label}\t{','.join(lexicon)}")
            labels.append(label)
    with open(args.output, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    print(f"{len(lines)} samples with {args.size}-word lexicons written to {args.output}")
    if args.global_out:
        with open(args.global_out, "w", encoding="utf-8") as out:
            out.write("\n".join(words + labels) + "\n")
        print(f"{len(words)} dictionary words + {len(labels)} test words written to {args.global_out}")


if __name__ == "__main__":
    main()
