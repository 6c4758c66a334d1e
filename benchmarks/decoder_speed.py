"""Decoding time and accuracy of each decoder on one benchmark, the model's forward pass run once.

    python benchmarks/decoder_speed.py --data data/benchmarks/IC13_857 --lexicon words.txt --per-sample LEX_LMDB

The model reads the LMDB once (batches of 64); every decoder then decodes the same log-probabilities, so the
times compare decoders alone (`eval`'s ms / image adds the forward pass, which varies with the machine's load).
Decoders: greedy, beam search, the `--lexicon` file (prefix-tree search, and the BK-tree candidates within edit
distance 3 of the reading that the CRNN paper scores, for comparison), and the per-sample lexicons of
`--per-sample` (an LMDB made by `create-lmdb --lexicons` from the same images). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from textrec.checkpoint import shipped_checkpoint
from textrec.data.lmdb_store import LmdbDataset
from textrec.decoder import PER_SAMPLE, make_decoder
from textrec.lexicon import CASE_INSENSITIVE, fold_to_36, word_log_probs
from textrec.metrics import Score, normalize_for_eval
from textrec.predict import Recognizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--data", default="data/benchmarks/IC13_857")
    parser.add_argument("--lexicon", help="a word-list file (one word a line)")
    parser.add_argument("--per-sample", help="an LMDB of the same images with lexicon-%%09d keys")
    parser.add_argument("--beam-width", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-bk-tree", action="store_true", help="leave out the (slow) BK-tree comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recognizer = Recognizer.from_checkpoint(args.checkpoint or shipped_checkpoint(), device="cpu", orientation=False)
    charset = recognizer.charset
    dataset = LmdbDataset(args.data)
    images, labels = [], []
    for index in range(len(dataset)):
        image, label = dataset.read_image(index)
        images.append(image)
        labels.append(normalize_for_eval(label))
    batches, forward = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            began = time.perf_counter()
            batch = recognizer.prepare(images[start : start + 64])
            batches.append(recognizer.model(batch).float().log_softmax(2))
            forward += time.perf_counter() - began
    rows = {"forward pass": {"ms_per_image": 1000 * forward / len(images)}}

    def run(name: str, decode) -> None:
        score = Score()
        began = time.perf_counter()
        texts = [text for number, log_probs in enumerate(batches) for text in decode(number, log_probs)]
        seconds = time.perf_counter() - began
        for text, label in zip(texts, labels):
            score.add(normalize_for_eval(text), label)
        rows[name] = {"ms_per_image": 1000 * seconds / len(images), "accuracy": score.accuracy}
        print(f"{name:42s} {rows[name]['ms_per_image']:8.2f} ms / image  {score.accuracy:6.2f} %", flush=True)

    print(f"{'forward pass (batch 64)':42s} {rows['forward pass']['ms_per_image']:8.2f} ms / image", flush=True)
    greedy = make_decoder(charset)
    run("greedy", lambda _, lp: [d.text for d in greedy.decode(lp, charset)])
    beam = make_decoder(charset, "beam", args.beam_width)
    run(f"beam {args.beam_width}", lambda _, lp: [d.text for d in beam.decode(lp, charset)])
    if args.lexicon:
        began = time.perf_counter()
        decoder = make_decoder(charset, lexicon=args.lexicon)
        rows["lexicon build"] = {"seconds": time.perf_counter() - began, "words": len(decoder.lexicon.words)}
        print(f"lexicon of {len(decoder.lexicon.words):,} words built in {rows['lexicon build']['seconds']:.2f} s", flush=True)
        run("greedy + lexicon (prefix-tree search)", lambda _, lp: [d.text for d in decoder.decode(lp, charset)])
        if not args.skip_bk_tree:
            lexicon = decoder.lexicon
            lexicon.candidates("")  # builds the BK-tree outside the timing

            def bk_tree(_, log_probs):  # the paper's way: score the words within distance 3 of the reading
                folded = fold_to_36(log_probs, charset)
                texts = []
                for b, reading in enumerate(greedy.decode(log_probs, charset)):
                    words = lexicon.candidates(normalize_for_eval(reading.text))
                    scores = word_log_probs(folded[:, b], words, CASE_INSENSITIVE)
                    texts.append(words[int(scores.argmax())])
                return texts

            run("greedy + lexicon (BK-tree, distance 3)", bk_tree)
    if args.per_sample:
        lexicon_data = LmdbDataset(args.per_sample)
        decoder = make_decoder(charset, lexicon=PER_SAMPLE)
        lexicons = [decoder.make_lexicon(lexicon_data.read_lexicon(i) or [], charset) for i in range(len(lexicon_data))]
        run("greedy + per-sample lexicons",
            lambda n, lp: [d.text for d in decoder.decode(lp, charset, lexicons[64 * n : 64 * n + lp.shape[1]])])
        beam_lexicon = make_decoder(charset, "beam", args.beam_width, PER_SAMPLE)
        run(f"beam {args.beam_width} + per-sample lexicons",
            lambda n, lp: [d.text for d in beam_lexicon.decode(lp, charset, lexicons[64 * n : 64 * n + lp.shape[1]])])
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
