"""The commands, through Typer's test runner, on data the tests generate."""

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from imagegen import png_bytes, render_word, write_lmdb

from test_train import TINY, WORDS

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


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
        "--no-augment", "--workers", 0, "--val-interval", 250,
    )
    assert result.exit_code == 0, result.output
    return root


def test_train_reports_result(trained):
    assert (trained / "run" / "best.safetensors").is_file()


def test_eval_benchmark_alias_table_and_json(trained):
    out = trained / "results.json"
    result = invoke(
        "eval", "--checkpoint", trained / "run" / "best.safetensors", "--benchmark", "IC13",
        "--data-root", trained / "data", "--json", out,
    )
    assert result.exit_code == 0, result.output
    assert "IC13 means IC13_857" in result.output
    assert "IC13_857" in result.output and "100.00" in result.output
    (record,) = json.loads(out.read_text())
    assert record["name"] == "IC13_857" and record["samples"] == 6 and record["accuracy"] == 100.0
    assert 0.99 <= record["ned"] <= 1.0


def test_eval_data_and_total_row(trained, tmp_path):
    other = write_lmdb(tmp_path / "other", [(png_bytes(render_word("cat")), "CAT"), (png_bytes(render_word("x")), "!!")])
    result = invoke(
        "eval", "--checkpoint", trained / "run" / "best.safetensors", "--benchmark", "IC13_857",
        "--data-root", trained / "data", "--data", other,
    )
    assert result.exit_code == 0, result.output
    assert "total" in result.output  # sample-weighted last row
    assert "excluded" in result.output


def test_eval_missing_benchmark_is_a_clear_error(trained, tmp_path):
    result = invoke("eval", "--checkpoint", trained / "run" / "best.safetensors", "--benchmark", "SVT", "--data-root", tmp_path)
    assert result.exit_code == 1
    assert "benchmark SVT not found" in result.output and "create-lmdb" in result.output
    assert "Traceback" not in result.output


def test_predict_files_folders_globs_and_json(trained):
    checkpoint = trained / "run" / "best.safetensors"
    result = invoke("predict", "--checkpoint", checkpoint, trained / "images" / "cat.png")
    assert result.exit_code == 0, result.output
    assert result.output.split("\t")[1] == "cat"
    result = invoke("predict", "--checkpoint", checkpoint, "--json", trained / "images")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert sorted(r["text"] for r in records) == sorted(WORDS)
    assert all(set(r) == {"image", "text", "confidence"} for r in records)
    result = invoke("predict", "--checkpoint", checkpoint, str(trained / "images" / "d*.png"))
    assert result.output.split("\t")[1] == "door"


def test_predict_reports_bad_files_and_still_answers_good_ones(trained, tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    render_word("gate").save(tmp_path / "good.png")
    result = invoke("predict", "--checkpoint", trained / "run" / "best.safetensors", tmp_path, tmp_path / "absent.png")
    assert result.exit_code == 1
    assert "good.png\tgate" in result.output
    assert "bad.png: not a readable image" in result.output
    assert "absent.png: no such file" in result.output
    assert "Traceback" not in result.output


def test_predict_without_checkpoint_or_model(tmp_path, monkeypatch):
    import cli.defaults

    monkeypatch.setattr(cli.defaults, "SHIPPED_CHECKPOINT", tmp_path / "none.safetensors")
    render_word("a").save(tmp_path / "a.png")
    monkeypatch.delenv("TEXTREC_CHECKPOINT", raising=False)
    result = invoke("predict", tmp_path / "a.png")
    assert result.exit_code == 1 and "no --checkpoint given" in result.output


def test_checkpoint_from_the_environment(trained, tmp_path, monkeypatch):
    """An install outside the source tree names its model with TEXTREC_CHECKPOINT."""
    import cli.defaults

    monkeypatch.setattr(cli.defaults, "SHIPPED_CHECKPOINT", tmp_path / "none.safetensors")
    monkeypatch.setenv("TEXTREC_CHECKPOINT", str(trained / "run" / "best.safetensors"))
    result = invoke("predict", trained / "images" / "door.png")
    assert result.exit_code == 0, result.output
    assert "door" in result.output


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
    recipe.write_text("max_stepz = 3\n", encoding="utf-8")
    result = invoke("train", "--config", recipe)
    assert result.exit_code == 1 and "unknown option(s) max_stepz" in result.output


def test_samples_renders_pngs_with_a_gt_file(tmp_path):
    result = invoke("samples", tmp_path / "s", "--count", 3)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "s" / "gt.txt").read_text().splitlines()
    assert len(lines) == 3 and all((tmp_path / "s" / line.split("\t")[0]).is_file() for line in lines)


def test_export_half_reads_the_same_and_onnx_is_written(trained, tmp_path):
    from textrec.predict import Recognizer

    source = trained / "run" / "best.safetensors"
    half = tmp_path / "half.safetensors"
    result = invoke("export", source, half, "--half")
    assert result.exit_code == 0, result.output
    assert half.stat().st_size < 0.6 * source.stat().st_size
    images = [render_word(w) for w in WORDS]
    full_read = Recognizer.from_checkpoint(source, device="cpu").recognize(images)
    half_read = Recognizer.from_checkpoint(half, device="cpu").recognize(images)
    assert [r.text for r in half_read] == [r.text for r in full_read]
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
