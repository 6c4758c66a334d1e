"""ONNX export: the suffix picks the format, the graph carries its own metadata, and onnxruntime reads what
`predict` reads (the shipped model, on generated word images; the docs' snippet included)."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from cliutil import assert_one_clear_line
from imagegen import render_word
from textrec.charset import Charset
from textrec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from textrec.confidence import Calibration
from textrec.data.images import Preprocess
from textrec.decode import greedy_decode
from textrec.export import check_onnx, onnx_bytes, read_onnx_metadata
from textrec.model import CRNN, CRNNConfig
from textrec.predict import Recognizer

pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install 'textrec[export]')")
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed (pip install onnxruntime): "
                               "the graph's outputs are not compared with predict's")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "default.safetensors"
TINY = dict(channels=(8, 16, 16, 16, 32, 32, 32), hidden_size=16)
# Short (narrower than the 32-px minimum input), ordinary, and wider than the shipped model's 160 px (squeezed).
WORDS = ["I", "42", "street", "Coffee", "$4.99", "A-12/B", "internationalization", "three words here"]
runner = CliRunner(env={"COLUMNS": "250"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def tiny_checkpoint(path: Path, calibration=None, **config) -> Path:
    """An untrained tiny model whose batch norms are set to the statistics of word images, so that its features
    (and every gate of its recurrent layers) have the scale of a trained model's, not the vanishing one of a fresh one."""
    torch.manual_seed(0)
    charset = Charset.from_spec("36")
    model_config = CRNNConfig(num_classes=charset.num_classes, **{**TINY, **config})
    model = CRNN(model_config)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # the running statistics become those of the batch below
    recognizer = Recognizer(model, charset, Preprocess())
    with torch.no_grad():
        model.backbone(recognizer.prepare([render_word(w) for w in ("gate", "refined", "42", "lstm")]))
    checkpoint = Checkpoint(model_config, charset, Preprocess(dynamic_width=True), model.state_dict(),
                            calibration=calibration)
    save_checkpoint(path, checkpoint)
    return path


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = invoke("export", SHIPPED, path)  # no --format: the suffix says ONNX
    assert result.exit_code == 0, result.output
    return path


def test_the_suffix_picks_the_format_and_a_conflicting_format_is_refused(tmp_path):
    source = tiny_checkpoint(tmp_path / "tiny.safetensors", rnn="lstm", refine="mul")
    assert invoke("export", source, tmp_path / "copy.safetensors").exit_code == 0
    load_checkpoint(tmp_path / "copy.safetensors")
    result = invoke("export", source, tmp_path / "model.onnx")
    assert result.exit_code == 0 and "onnx" in result.output, result.output
    assert read_onnx_metadata(tmp_path / "model.onnx")["charset"] == Charset.from_spec("36").chars
    target = tmp_path / "other.onnx"
    assert_one_clear_line(invoke("export", source, target, "--format", "safetensors"), str(target), "contradicts", ".onnx")
    assert_one_clear_line(invoke("export", source, tmp_path / "m.safetensors", "--format", "onnx"), "contradicts")
    assert_one_clear_line(invoke("export", source, tmp_path / "model.bin"), "model.bin", "--format")
    assert not target.exists() and not (tmp_path / "model.bin").exists()
    assert invoke("export", source, tmp_path / "model.bin", "--format", "onnx").exit_code == 0
    assert read_onnx_metadata(tmp_path / "model.bin")["format"] == "textrec-crnn-onnx"
    assert_one_clear_line(invoke("export", tmp_path / "model.onnx", tmp_path / "again.onnx"), "model.onnx", "not a safetensors")
    assert_one_clear_line(invoke("export", tmp_path / "missing.safetensors", tmp_path / "m2.onnx"), "missing.safetensors")


def test_the_graph_carries_charset_preprocessing_and_calibration(tmp_path):
    import onnx

    calibration = Calibration(slope=0.8, intercept=1.5, samples=100, data="val")
    source = tiny_checkpoint(tmp_path / "tiny.safetensors", calibration=calibration, rnn="gru", refine="add")
    assert invoke("export", source, tmp_path / "model.onnx").exit_code == 0
    graph = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(graph)
    # the backbone's pools export as ONNX MaxPool, not as the strided maxima that CPU reads take
    assert sum(node.op_type == "MaxPool" for node in graph.graph.node) == 4
    assert {p.key: json.loads(p.value) for p in graph.metadata_props}["blank_index"] == 0  # every value a JSON text
    (images,), (logits,) = graph.graph.input, graph.graph.output
    assert [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim] == ["batch", 1, 32, "width"]
    assert [d.dim_param for d in logits.type.tensor_type.shape.dim][:2] == ["frames", "batch"]
    meta = read_onnx_metadata(tmp_path / "model.onnx")
    assert meta["charset"] == Charset.from_spec("36").chars and meta["blank_index"] == 0
    assert meta["calibration"] == calibration.to_dict()
    preprocess = meta["preprocess"]
    assert Preprocess.from_dict({k: preprocess[k] for k in Preprocess().to_dict()}) == load_checkpoint(source).preprocess
    assert preprocess["min_width"] == 32 and "grayscale" in preprocess["color"] and "bicubic" in preprocess["resample"]
    # A checkpoint's own minimum width (textrec export --min-width) reaches the graph and back
    from textrec.export import export_safetensors

    export_safetensors(source, tmp_path / "min.safetensors", dynamic_width=True, min_width=48)
    assert invoke("export", tmp_path / "min.safetensors", tmp_path / "min.onnx").exit_code == 0
    assert read_onnx_metadata(tmp_path / "min.onnx")["preprocess"]["min_width"] == 48
    if importlib.util.find_spec("onnxruntime"):
        from textrec.export import onnx_recognizer

        assert onnx_recognizer(tmp_path / "min.onnx").preprocess.min_width == 48
    assert meta["model"]["rnn"] == "gru" and meta["textrec_version"]
    uncalibrated = tiny_checkpoint(tmp_path / "plain.safetensors")
    assert invoke("export", uncalibrated, tmp_path / "plain.onnx").exit_code == 0
    assert read_onnx_metadata(tmp_path / "plain.onnx")["calibration"] is None


@needs_ort
@pytest.mark.parametrize("config", [
    dict(rnn="lstm", refine="mul"),
    dict(rnn="gru", refine="mul", refine_bound="tanh", refine_gates=("z",)),
    dict(rnn="mgu", refine="mul", refine_init="vanilla"),
    dict(rnn="lstm", refine="add", input_map=True),
    dict(rnn="gru"),
    dict(rnn="lstm", backbone="resnet", channels=(8, 8, 16, 16)),
    dict(rnn="lstm", refine="add", refine_gates=("i", "o"), refine_bound="tanh"),  # the shipped variant, trained
    dict(rnn="lstm", refine="mul", refine_gates=("f",)),
    dict(rnn="lstm", input_map=True),
    dict(rnn="lstm", refine="add", refine_gates=("i", "o"), refine_bound="tanh", refine_rank=4),
], ids=["lstm-mul", "gru-mul-tanh-z", "mgu-mul-vanilla", "lstm-add-input-map", "gru-vanilla", "resnet-lstm",
        "lstm-add-io-tanh", "lstm-mul-f", "lstm-vanilla-input-map", "lstm-add-io-tanh-rank4"])
def test_every_recurrence_exports_for_any_width(tmp_path, config):
    """Refined gates, MGUs and input maps run as an ONNX Loop; vanilla GRU (and LSTM: the shipped model) as ONNX's
    own operator."""
    from textrec.export import OnnxModel

    checkpoint = load_checkpoint(tiny_checkpoint(tmp_path / "tiny.safetensors", **config))
    data = onnx_bytes(checkpoint)
    model, session = checkpoint.build_model().eval(), OnnxModel(data, threads=1)
    generator = torch.Generator().manual_seed(1)
    for width in (32, 36, 100, 161):  # the narrowest input, odd sizes, wider than the export's example (100)
        images = torch.rand(3, 1, 32, width, generator=generator) * 2 - 1
        with torch.no_grad():
            expected = model(images)
        got = session(images)
        assert got.shape == expected.shape == (width // 4 + 1, 3, 37)
        spread = expected.std(dim=(0, 1)).max().item()  # how much the logits vary over frames and images
        assert spread > 1e-3 and (got - expected).abs().max().item() < spread / 100
    assert check_onnx(checkpoint, data) < 1e-4  # what the export itself checks


def _ort_session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@needs_ort
@pytest.mark.parametrize("batch_size", [1, 8])
def test_onnxruntime_reads_what_predict_reads(shipped_onnx, batch_size):
    recognizer = Recognizer.from_checkpoint(SHIPPED, device="cpu", orientation=False)
    session = _ort_session(shipped_onnx)
    images = [render_word(w) for w in WORDS] + [render_word("Dark", invert=True), render_word("tall", height=64)]
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        expected = recognizer.recognize(chunk, batch_size)
        inputs = recognizer.prepare(chunk)
        logits = torch.from_numpy(session.run(None, {"images": inputs.numpy()})[0])
        got = greedy_decode(logits.log_softmax(2), recognizer.charset)
        assert [g.text for g in got] == [e.text for e in expected]
        for g, e in zip(got, expected):
            assert g.log_score == pytest.approx(e.log_score, abs=1e-3)


@needs_ort
def test_the_deploy_snippet_reads_what_predict_reads(shipped_onnx, tmp_path):
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(snippet.strip().splitlines()) <= 20
    code = snippet.replace('"model.onnx"', repr(str(shipped_onnx))).replace('print(read("word.png"))', "")
    namespace: dict = {}
    exec(compile(code, "docs/deploy.md", "exec"), namespace)
    recognizer = Recognizer.from_checkpoint(SHIPPED, device="cpu", orientation=False)
    paths = []
    for index, word in enumerate(WORDS):
        paths.append(tmp_path / f"{index}.png")
        render_word(word).save(paths[-1])
    expected = [r.text for r in recognizer.read(paths, batch_size=1)]
    assert [namespace["read"](path) for path in paths] == expected
    assert sum(e == w for e, w in zip(expected, WORDS)) >= len(WORDS) - 2  # and the model does read them


@needs_ort
def test_an_exported_graph_loads_as_a_recognizer_from_its_metadata(shipped_onnx):
    from textrec.export import onnx_recognizer

    ours = onnx_recognizer(shipped_onnx, threads=1)
    reference = Recognizer.from_checkpoint(SHIPPED, device="cpu", orientation=False)
    assert (ours.charset, ours.preprocess, ours.calibration) == (reference.charset, reference.preprocess, reference.calibration)
    images = [render_word(w) for w in WORDS]
    expected = reference.read(images)
    got = ours.read(images)
    assert [r.text for r in got] == [r.text for r in expected]
    assert [r.confidence for r in got] == pytest.approx([r.confidence for r in expected], abs=1e-4)


@needs_ort
def test_predict_and_the_api_take_an_onnx_graph_as_the_checkpoint(shipped_onnx, tmp_path):
    """`--checkpoint model.onnx` runs onnxruntime and reads what torch reads. The graph gives no features for the
    orientation probe, so its orientation search uses the recognizer's scores alone (logit 0)."""
    paths = []
    for index, word in enumerate(w for w in WORDS if len(w) > 2):  # words: single characters are tall crops
        paths.append(tmp_path / f"{index}.png")
        render_word(word).save(paths[-1])
    on_torch = [r.text for r in Recognizer.from_checkpoint(SHIPPED, device="cpu", orientation=False).read(paths)]
    on_ort = Recognizer.from_checkpoint(shipped_onnx)
    assert on_ort.orientation is not None and on_ort.orientation_probe is None
    assert [r.text for r in on_ort.read(paths)] == on_torch
    result = invoke("predict", "--checkpoint", shipped_onnx, "--json", *paths)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["text"], r["rotation"]) for r in records] == [(t, 0) for t in on_torch]


@needs_ort
def test_int8_export_is_smaller_and_still_reads(tmp_path):
    from textrec.export import onnx_recognizer

    source = tiny_checkpoint(tmp_path / "tiny.safetensors", rnn="lstm", refine="mul", hidden_size=64)
    assert invoke("export", source, tmp_path / "float.onnx").exit_code == 0
    result = invoke("export", source, tmp_path / "int8.onnx", "--int8")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "int8.onnx").stat().st_size < 0.8 * (tmp_path / "float.onnx").stat().st_size
    meta = read_onnx_metadata(tmp_path / "int8.onnx")
    assert meta["weights"].startswith("int8") and read_onnx_metadata(tmp_path / "float.onnx")["weights"] == "float32"
    images = [render_word(w) for w in WORDS[:3]]
    plain, int8 = onnx_recognizer(tmp_path / "float.onnx", threads=1), onnx_recognizer(tmp_path / "int8.onnx", threads=1)
    logits = [r.model(r.prepare(images)) for r in (plain, int8)]
    assert logits[0].shape == logits[1].shape and bool(torch.isfinite(logits[1]).all())
    assert 0 < (logits[0] - logits[1]).abs().max() < 0.5  # close, not equal: the weights are int8
    assert_one_clear_line(invoke("export", source, tmp_path / "m.safetensors", "--int8"), "--int8", "onnx")


def test_missing_packages_are_named_and_onnxruntime_is_optional(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    missing: set[str] = set()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name in missing else real_find_spec(name, *rest))
    source = tiny_checkpoint(tmp_path / "tiny.safetensors")
    missing.add("onnxruntime")  # the export then writes the graph without running it
    assert invoke("export", source, tmp_path / "model.onnx").exit_code == 0
    assert read_onnx_metadata(tmp_path / "model.onnx")["blank_index"] == 0
    assert_one_clear_line(invoke("export", source, tmp_path / "q.onnx", "--int8"), "onnxruntime", "textrec[onnxruntime]")
    missing.add("onnx")
    assert_one_clear_line(invoke("export", source, tmp_path / "m2.onnx"), "install the onnx package", "textrec[export]")
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "m2.onnx").exists()


def test_the_metadata_of_a_foreign_graph_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    from textrec.errors import CheckpointError

    with pytest.raises(CheckpointError, match="without textrec metadata"):
        read_onnx_metadata(tmp_path / "other.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not protobuf at all" * 3)
    with pytest.raises(CheckpointError, match="junk.onnx"):
        read_onnx_metadata(tmp_path / "junk.onnx")


@needs_ort
def test_the_export_check_still_catches_a_graph_of_other_weights(tmp_path):
    """check_onnx allows ten times the model's own float32 rounding (for ill-conditioned models); a graph that computes
    something else (here: one weight of the recurrent layer changed by 5 %) must still fail."""
    from textrec.errors import CheckpointError

    checkpoint = load_checkpoint(tiny_checkpoint(tmp_path / "tiny.safetensors", rnn="lstm", refine="add", refine_gates=("i", "o"),
                                                 refine_bound="tanh"))
    data = onnx_bytes(checkpoint)
    assert check_onnx(checkpoint, data) < 1e-4
    state = dict(checkpoint.state_dict)
    state["sequence.weight_hh_l0"] = state["sequence.weight_hh_l0"] * 1.05
    other = Checkpoint(checkpoint.model_config, checkpoint.charset, checkpoint.preprocess, state, source="other")
    with pytest.raises(CheckpointError, match="other: the ONNX graph's outputs differ from the model's"):
        check_onnx(other, data)
