"""The commands, through Typer's test runner, on data the tests generate.

The model here is trained through the CLI for a few hundred steps, and where such a run ends depends on float
rounding, hence on which SIMD kernels torch picks on the machine (issue 17). So these tests check the wiring
against the same model read through the library in the same batch (the same computation, so the same answer on
every kernel path), never against the ground truth; whether the run learned is checked with wide margins only.
"""

import json
from pathlib import Path
from statistics import mean

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from cliutil import assert_one_clear_line
from imagegen import png_bytes, render_word, write_lmdb
from textrec.checkpoint import load_checkpoint
from textrec.data.lmdb_store import LmdbDataset
from textrec.metrics import normalize_for_eval, normalized_edit_similarity
from textrec.predict import Reading, Recognizer, cpu_threads

from test_train import TINY, WORDS

runner = CliRunner(env={"COLUMNS": "250"})  # wide enough that rich never wraps the table


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def read_files(checkpoint: Path, paths: list[Path]) -> list[Reading]:
    """What the library reads in these files, as one batch in this order: how `predict` batches up to 32 files."""
    return Recognizer.from_checkpoint(checkpoint, device="cpu").read(paths)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI on six generated words."""
    root = tmp_path_factory.mktemp("cli")
    images = root / "images"
    images.mkdir()
    for word in WORDS:
        render_word(word).save(images / f"{word}.png")
    (root / "gt.txt").write_text("".join(f"images/{w}.png\t{w}\n" for w in WORDS), encoding="utf-8")
    result = invoke("create-lmdb", root / "gt.txt", root / "data" / "benchmarks" / "IC13_857")
    assert result.exit_code == 0, result.output
    assert "wrote 6 samples" in result.output
    lmdb_path = root / "data" / "benchmarks" / "IC13_857"
    result = invoke(
        "train", "--train-data", lmdb_path, "--val-data", lmdb_path, "--output", root / "run",
        "--max-steps", 250, "--batch-size", 12, "--lr", 3e-3, "--rnn", "lstm", "--refine", "mul",
        "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"],
        "--no-augment", "--workers", 0, "--val-interval", 250, "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    (root / "train.log").write_text(result.output, encoding="utf-8")
    return root


def test_train_reports_result_and_learns(trained):
    """It learned, by margins that hold on every kernel path: over 13 seeds this run's loss fell 63- to 24,000-fold
    and it read four to six words of six (test_train.py has the same check of the library's training job)."""
    run = trained / "run"
    assert (run / "best.safetensors").is_file() and (run / "last.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 10 and mean(losses[-3:]) < losses[0] / 5, losses  # the loss fell by a wide factor
    (accuracy,) = [r["val_accuracy"] for r in records if "val_accuracy" in r]
    assert accuracy >= 100 / 3, accuracy  # two words of six at least; chance is none
    assert f"validation word acc. {accuracy:.2f}%" in (trained / "train.log").read_text()


def test_eval_benchmark_alias_table_and_json(trained):
    """eval's figures are those of the same model read through the library, scored by hand; table and JSON agree."""
    checkpoint = trained / "run" / "best.safetensors"
    out = trained / "results.json"
    result = invoke(
        "eval", "--checkpoint", checkpoint, "--benchmark", "IC13", "--data-root", trained / "data", "--json", out,
        "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "IC13 means IC13_857" in result.output

    dataset = LmdbDataset(trained / "data" / "benchmarks" / "IC13_857")
    labels = [normalize_for_eval(dataset.read_label(i)) for i in range(len(dataset))]
    images = [dataset.read_image(i)[0] for i in range(len(dataset))]
    readings = Recognizer.from_checkpoint(checkpoint, device="cpu").recognize(images, batch_size=64)  # eval's batch
    texts = [normalize_for_eval(r.text) for r in readings]
    correct = sum(t == label for t, label in zip(texts, labels))
    accuracy = 100.0 * correct / len(labels)
    ned = mean(normalized_edit_similarity(t, label) for t, label in zip(texts, labels))

    (record,) = json.loads(out.read_text())
    assert (record["name"], record["samples"], record["correct"]) == ("IC13_857", 6, correct)
    assert record["accuracy"] == pytest.approx(accuracy) and record["ned"] == pytest.approx(ned)
    assert record["excluded_empty"] == 0 and record["failed"] == []
    (row,) = [line for line in result.output.splitlines() if "│" in line and "IC13_857" in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[:4] == ["IC13_857", "6", f"{record['accuracy']:.2f}", f"{record['ned']:.4f}"], cells
    assert cells[-2:] == ["0", "0"], cells


def test_eval_data_and_average_row(trained, tmp_path):
    other = write_lmdb(tmp_path / "other", [(png_bytes(render_word("cat")), "CAT"), (png_bytes(render_word("x")), "!!")])
    result = invoke(
        "eval", "--checkpoint", trained / "run" / "best.safetensors", "--benchmark", "IC13_857",
        "--data-root", trained / "data", "--data", other, "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "│ average" in result.output  # sample-weighted last row
    assert "excluded" in result.output


def test_eval_missing_benchmark_is_a_clear_error(trained, tmp_path):
    result = invoke("eval", "--checkpoint", trained / "run" / "best.safetensors", "--benchmark", "SVT", "--data-root", tmp_path)
    assert result.exit_code == 1
    assert "benchmark SVT not found" in result.output and "create-lmdb" in result.output
    assert "Traceback" not in result.output


def test_predict_files_folders_globs_and_json(trained):
    checkpoint = trained / "run" / "best.safetensors"
    cat = trained / "images" / "cat.png"
    result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", cat)
    assert result.exit_code == 0, result.output
    (expected,) = read_files(checkpoint, [cat])
    assert result.output.splitlines() == [f"{cat}\t{expected.text}\t{expected.confidence:.3f}"]

    result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", "--json", trained / "images")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert all(set(r) == {"image", "text", "confidence", "rotation"} for r in records)
    paths = [Path(r["image"]) for r in records]
    assert paths == sorted((trained / "images").iterdir())  # every image of the folder, in name order
    expected = read_files(checkpoint, paths)
    assert [(r["text"], r["confidence"], r["rotation"]) for r in records] == [
        (e.text, round(e.confidence, 4), e.rotation) for e in expected
    ]

    result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", str(trained / "images" / "d*.png"))
    assert result.exit_code == 0, result.output
    door = trained / "images" / "door.png"
    (expected,) = read_files(checkpoint, [door])
    assert result.output.splitlines() == [f"{door}\t{expected.text}\t{expected.confidence:.3f}"]


def test_predict_threads_one_for_small_batches_or_as_told(trained, monkeypatch):
    # Batch-1 reads run on one intra-op thread unless told (docs/deploy.md, "Speed"); the answer is the same.
    assert cpu_threads(1, 32) == 1 and cpu_threads(4, 32) == 1 and cpu_threads(100, 2) == 1
    assert cpu_threads(100, 32) is None and cpu_threads(1, 32, requested=3) == 3
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)  # the suite's own thread setting stays as it is
    checkpoint = trained / "run" / "best.safetensors"
    cat = trained / "images" / "cat.png"
    (expected,) = read_files(checkpoint, [cat])
    for extra, wanted in (([], [1]), (["--threads", "2"], [2])):
        result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", *extra, cat)
        assert result.exit_code == 0, result.output
        assert result.output.split("\t")[1] == expected.text and chosen == wanted
        chosen.clear()


def test_predict_reports_bad_files_and_still_answers_good_ones(trained, tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    render_word("gate").save(tmp_path / "good.png")
    checkpoint = trained / "run" / "best.safetensors"
    result = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", tmp_path, tmp_path / "absent.png")
    assert result.exit_code == 1
    (expected,) = read_files(checkpoint, [tmp_path / "good.png"])
    assert f"good.png\t{expected.text}\t{expected.confidence:.3f}" in result.output
    assert "bad.png: not a readable image" in result.output
    assert "absent.png: no such file" in result.output
    assert "Traceback" not in result.output


def test_predict_without_checkpoint_or_model(tmp_path, monkeypatch):
    import textrec.checkpoint

    monkeypatch.setattr(textrec.checkpoint, "SHIPPED_CHECKPOINT", tmp_path / "none.safetensors")
    render_word("a").save(tmp_path / "a.png")
    monkeypatch.delenv("TEXTREC_CHECKPOINT", raising=False)
    result = invoke("predict", tmp_path / "a.png")
    assert result.exit_code == 1 and "no checkpoint named" in result.output


def test_checkpoint_from_the_environment(trained, tmp_path, monkeypatch):
    """An install outside the source tree names its model with TEXTREC_CHECKPOINT: the same reading as --checkpoint."""
    import textrec.checkpoint

    checkpoint = trained / "run" / "best.safetensors"
    door = trained / "images" / "door.png"
    named = invoke("predict", "--checkpoint", checkpoint, "--device", "cpu", door)
    assert named.exit_code == 0, named.output
    monkeypatch.setattr(textrec.checkpoint, "SHIPPED_CHECKPOINT", tmp_path / "none.safetensors")
    monkeypatch.setenv("TEXTREC_CHECKPOINT", str(checkpoint))
    result = invoke("predict", "--device", "cpu", door)
    assert result.exit_code == 0, result.output
    assert result.output == named.output and result.output.startswith(f"{door}\t")


def test_train_from_a_config_file_with_overrides(tmp_path, trained):
    recipe = tmp_path / "recipe.toml"
    lmdb_path = trained / "data" / "benchmarks" / "IC13_857"
    recipe.write_text(
        f'train_data = ["{lmdb_path}"]\noutput = "{tmp_path / "run"}"\nmax_steps = 3\nbatch_size = 6\n'
        f'channels = {list(TINY["channels"])}\nhidden_size = {TINY["hidden_size"]}\nworkers = 0\naugment = false\n'
        'refine = "add"\n',
        encoding="utf-8",
    )
    result = invoke("train", "--config", recipe, "--max-steps", 2, "--rnn", "mgu")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["max_steps"], saved["batch_size"], saved["rnn"], saved["refine"]) == (2, 6, "mgu", "add")
    # a recipe's refined subset is undone on the command line with --refine-gates all (the vanilla twin of a lease)
    recipe.write_text(recipe.read_text(encoding="utf-8") + 'refine_gates = "i,o"\nrefine_bound = "tanh"\nrefine_rank = 2\n',
                      encoding="utf-8")
    result = invoke("train", "--config", recipe, "--max-steps", 1, "--output", tmp_path / "twin",
                    "--refine", "none", "--refine-gates", "all", "--refine-bound", "none", "--refine-rank", 0)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "twin" / "config.json").read_text())
    assert (saved["refine"], saved["refine_gates"], saved["refine_bound"], saved["refine_rank"]) == ("none", [], "none", 0)
    recipe.write_text("max_stepz = 3\n", encoding="utf-8")
    result = invoke("train", "--config", recipe)
    assert result.exit_code == 1 and "unknown option(s) max_stepz" in result.output


def test_samples_renders_pngs_with_a_gt_file(tmp_path):
    result = invoke("samples", tmp_path / "s", "--count", 3)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "s" / "gt.txt").read_text().splitlines()
    assert len(lines) == 3 and all((tmp_path / "s" / line.split("\t")[0]).is_file() for line in lines)


def test_export_half_reads_the_same_and_onnx_is_written(trained, tmp_path):
    source = trained / "run" / "best.safetensors"
    half = tmp_path / "half.safetensors"
    result = invoke("export", source, half, "--half")
    assert result.exit_code == 0, result.output
    assert half.stat().st_size < 0.6 * source.stat().st_size
    # float16 weights move the outputs a little; a reading may only change on a frame whose best two classes are
    # closer than that (which a short training run may leave on some kernel path), so compare the probabilities.
    images = [render_word(w) for w in WORDS]
    full_model = Recognizer.from_checkpoint(source, device="cpu")
    half_model = Recognizer.from_checkpoint(half, device="cpu")
    with torch.inference_mode():
        full_probs = full_model.model(full_model.prepare(images)).float().softmax(2)
        half_probs = half_model.model(half_model.prepare(images)).float().softmax(2)
    drift = (full_probs - half_probs).abs().max().item()
    assert drift < 0.02, drift
    best_two = full_probs.topk(2, dim=2).values
    margins = (best_two[..., 0] - best_two[..., 1]).amin(dim=0).tolist()  # per image, over its frames
    full_read, half_read = full_model.recognize(images), half_model.recognize(images)
    for margin, full_text, half_text in zip(margins, full_read, half_read):
        if margin > 2 * drift:  # no frame's best class can have changed
            assert half_text.text == full_text.text, (margin, drift)
        # a product of per-frame best probabilities, each of which moves by at most `drift`
        assert half_text.confidence == pytest.approx(full_text.confidence, abs=len(full_probs) * drift + 1e-6)
    result = invoke("export", source, tmp_path / "model.onnx", "--format", "onnx")
    assert result.exit_code == 0, result.output
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["images"]
    result = invoke("export", source, tmp_path / "x", "--format", "tflite")
    assert result.exit_code == 1 and "unknown format" in result.output


def test_train_refine_gates_option(tmp_path, trained):
    lmdb_path = trained / "data" / "benchmarks" / "IC13_857"
    common = ["train", "--train-data", lmdb_path, "--max-steps", 1, "--batch-size", 6, "--workers", 0,
              "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"]]
    result = invoke(*common, "--output", tmp_path / "io", "--refine", "add", "--refine-gates", "i, o")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "io" / "config.json").read_text())["refine_gates"] == ["i", "o"]
    result = invoke(*common, "--output", tmp_path / "bad", "--refine", "add", "--refine-gates", "i,q")
    assert result.exit_code == 1 and "error: cannot refine gate(s) 'q' of lstm" in result.output
    result = invoke(*common, "--output", tmp_path / "rank", "--refine", "add", "--refine-gates", "i,o", "--refine-rank", 2)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "rank" / "config.json").read_text())["refine_rank"] == 2
    assert load_checkpoint(tmp_path / "rank" / "last.safetensors").model_config.refine_rank == 2
    result = invoke(*common, "--output", tmp_path / "badrank", "--refine-rank", 2)
    assert result.exit_code == 1 and "error: refine_rank=2 needs refine='add' or 'mul', not 'none'" in result.output


def test_train_mixed_precision_options(tmp_path, trained):
    lmdb_path = trained / "data" / "benchmarks" / "IC13_857"
    common = ["train", "--train-data", lmdb_path, "--max-steps", 1, "--batch-size", 6, "--workers", 0, "--device", "cpu",
              "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"]]
    result = invoke(*common, "--output", tmp_path / "plain")
    assert result.exit_code == 0 and "device: cpu (float32);" in result.output, result.output
    result = invoke(*common, "--output", tmp_path / "bf16", "--amp-dtype", "bfloat16")
    assert result.exit_code == 0 and "device: cpu (bfloat16 mixed);" in result.output, result.output
    assert_one_clear_line(invoke(*common, "--output", tmp_path / "f16", "--amp-dtype", "float16"), "--amp-dtype float16 is for CUDA")
    assert_one_clear_line(invoke(*common, "--output", tmp_path / "bad", "--amp-dtype", "half"), "--amp-dtype must be one of")


def test_train_height_option(tmp_path, trained):
    """--height trains a taller input; the checkpoint carries it, so predict and eval resize to it unasked."""
    lmdb_path = trained / "data" / "benchmarks" / "IC13_857"
    common = ["train", "--train-data", lmdb_path, "--max-steps", 1, "--batch-size", 6, "--workers", 0, "--device", "cpu",
              "--channels", ",".join(map(str, TINY["channels"])), "--hidden-size", TINY["hidden_size"]]
    result = invoke(*common, "--output", tmp_path / "tall", "--height", 48, "--width", 72)
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(tmp_path / "tall" / "last.safetensors")
    assert (checkpoint.preprocess.height, checkpoint.preprocess.width) == (48, 72)
    result = invoke("predict", "--checkpoint", tmp_path / "tall" / "last.safetensors", "--device", "cpu", "--json",
                    trained / "images")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    expected = read_files(tmp_path / "tall" / "last.safetensors", [Path(r["image"]) for r in records])
    assert len(records) == len(list((trained / "images").iterdir()))
    assert [r["text"] for r in records] == [e.text for e in expected]  # the Recognizer reads at 48 px too
    result = invoke(*common, "--output", tmp_path / "short", "--height", 24)
    assert result.exit_code != 0 and "--height" in result.output  # the VGG halves the height four times

def test_export_sets_the_inference_width_mode(trained, tmp_path):
    source = trained / "run" / "best.safetensors"
    assert not load_checkpoint(source).preprocess.dynamic_width
    result = invoke("export", source, tmp_path / "dyn.safetensors", "--dynamic-width")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "dyn.safetensors").preprocess.dynamic_width
    result = invoke("export", tmp_path / "dyn.safetensors", tmp_path / "fixed.safetensors", "--fixed-width")
    assert not load_checkpoint(tmp_path / "fixed.safetensors").preprocess.dynamic_width
    assert_one_clear_line(invoke("export", source, tmp_path / "m.onnx", "--format", "onnx", "--dynamic-width"), "safetensors")
    result = invoke("export", tmp_path / "dyn.safetensors", tmp_path / "min.safetensors", "--min-width", 64)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "min.safetensors").preprocess.min_width == 64
    assert_one_clear_line(invoke("export", source, tmp_path / "big.safetensors", "--min-width", 100000), "--min-width 100000")
