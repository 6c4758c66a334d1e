"""The convolutional backbones: VGG (the CRNN paper's) and ResNet (deep-text-recognition-benchmark's).

Both must give the recurrent layers the same number of frames for any input width (the CTC frame
budget of the labels depends on it), train, save and load, and be refused where they do not fit.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from benchmark_loader import load_benchmark
from imagegen import png_bytes, render_word, write_lmdb
from textrec.charset import Charset
from textrec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from textrec.data.images import Preprocess
from textrec.errors import CheckpointError, ConfigError
from textrec.model import CRNN, CRNNConfig
from textrec.model import backbones
from textrec.model.backbones import RESNET_CHANNELS, MaxPool, ResNet, VGG, strided_max_pool
from textrec.predict import Recognizer
from textrec.train import TrainConfig, train

SMALL_RESNET = (8, 8, 16, 16)


@pytest.mark.parametrize("width", [8, 32, 37, 100, 160, 257])
def test_both_backbones_give_the_same_frames_for_any_width(width):
    images = torch.randn(2, 1, 32, width)
    vgg = VGG(1, (4, 4, 8, 8, 8, 8, 16))(images)
    resnet = ResNet(1, SMALL_RESNET)(images)
    assert vgg.shape[-1] == resnet.shape[-1] == VGG.output_width(width) == ResNet.output_width(width)
    assert resnet.shape[:3] == (2, 16, 1)


def test_the_resnet_has_the_reference_layout():
    # deep-text-recognition-benchmark's ResNet_FeatureExtraction(1, 512): 1, 2, 5, 3 basic blocks of widths
    # 128, 256, 512, 512, a stem of 32 and 64 channels, and about 44.4 M parameters in all.
    net = ResNet(1, RESNET_CHANNELS)
    blocks = [m for m in net.modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 11 and net.out_channels == 512
    assert net.features[0].out_channels == 32 and net.features[3].out_channels == 64
    assert 44e6 < sum(p.numel() for p in net.parameters()) < 45e6


def test_a_resnet_model_trains_saves_loads_and_reads(tmp_path):
    words = ["cat", "door", "exit", "open", "shop", "42"] * 4
    data = write_lmdb(tmp_path / "words", [(png_bytes(render_word(w)), w) for w in words])
    config = TrainConfig(
        train_data=[str(data)], val_data=[str(data)], output=str(tmp_path / "run"), max_steps=6, batch_size=8,
        val_interval=6, save_interval=6, workers=0, augment=False, backbone="resnet", channels=SMALL_RESNET,
        hidden_size=16, device="cpu",
    )
    result = train(config)
    assert result.steps == 6
    checkpoint = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert checkpoint.model_config.backbone == "resnet" and checkpoint.model_config.channels == SMALL_RESNET
    reading = Recognizer.from_checkpoint(tmp_path / "run" / "last.safetensors", device="cpu").read(render_word("cat"))
    assert isinstance(reading.text, str)
    # Resuming with the other backbone is refused: the architecture is part of the run.
    with pytest.raises(CheckpointError, match="backbone"):
        train(TrainConfig(**{**config.__dict__, "backbone": "vgg", "channels": (4, 4, 8, 8, 8, 8, 16), "max_steps": 8}))


@pytest.mark.parametrize("backbone, channels, expected", [
    ("resnet", (64, 128, 256, 256, 512, 512, 512), "4 whole numbers"),
    ("vgg", (8, 8, 16, 16), "7 whole numbers"),
    ("densenet", (8, 8, 16, 16), "one of vgg, resnet"),
])
def test_widths_that_do_not_fit_the_backbone_are_refused(tmp_path, backbone, channels, expected):
    from textrec.train import check_config

    with pytest.raises(ConfigError, match=expected):
        check_config(TrainConfig(train_data=["x"], val_data=[], output=str(tmp_path), backbone=backbone, channels=channels))


def test_a_checkpoint_whose_widths_do_not_fit_its_backbone_is_refused_before_building(tmp_path):
    from test_reliability import rewrite

    config = CRNNConfig(num_classes=37, backbone="resnet", channels=SMALL_RESNET, hidden_size=8)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, Checkpoint(config, Charset.from_spec("36"), Preprocess(), CRNN(config).state_dict()))
    assert load_checkpoint(path).model_config.backbone == "resnet"
    edited = rewrite(path, tmp_path / "vgg.safetensors", "model.backbone", "vgg")
    with pytest.raises(CheckpointError, match=r"model\.channels = \[8, 8, 16, 16\] \(expected 7 widths"):
        load_checkpoint(edited)
    unknown = rewrite(path, tmp_path / "unknown.safetensors", "model.backbone", "densenet")
    with pytest.raises(CheckpointError, match=r"model\.backbone = 'densenet' \(expected one of vgg, resnet\)"):
        load_checkpoint(unknown)


def test_the_cli_takes_the_backbone_and_its_default_widths(tmp_path):
    from cliutil import assert_one_clear_line, invoke

    data = write_lmdb(tmp_path / "words", [(png_bytes(render_word(w)), w) for w in ["cat", "door", "exit", "42"] * 3])
    common = ["train", "--train-data", data, "--output", tmp_path / "run", "--max-steps", 1, "--batch-size", 4,
              "--workers", 0, "--device", "cpu", "--hidden-size", 8, "--backbone", "resnet"]
    assert_one_clear_line(invoke(*common, "--channels", "8,8,16,16,16,16,16"), "--channels", "4 whole numbers", "128,256,512,512")
    result = invoke(*common, "--channels", "8,8,16,16")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run" / "last.safetensors").model_config.channels == SMALL_RESNET
    # Without --channels, the backbone's own default widths (deep-text-recognition-benchmark's 44 M-parameter ResNet).
    result = invoke(*common[:-2], "--batch-size", 2, "--output", tmp_path / "default", "--backbone", "resnet")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "default" / "last.safetensors").model_config.channels == RESNET_CHANNELS


POOLS = [((2, 2), (0, 0)), ((2, 1), (0, 1))]  # the two pools of both backbones


@pytest.mark.parametrize("stride, padding", POOLS)
@pytest.mark.parametrize("shape", [(1, 3, 32, 128), (2, 5, 8, 33), (3, 2, 4, 7), (1, 1, 2, 2), (2, 4, 3, 5)])
def test_the_strided_max_pool_equals_torchs_kernel(stride, padding, shape):
    x = torch.randn(shape)
    x[..., 0, 0] = float("-inf")
    if shape[-1] > 3:
        x[0, 0, 1, 3] = float("nan")  # propagates in both
    expected = torch.nn.functional.max_pool2d(x, 2, stride, padding)
    got = strided_max_pool(x, stride, padding)
    assert got.shape == expected.shape
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())


def test_the_pool_takes_the_fast_path_only_for_cpu_reads(monkeypatch):
    pool = MaxPool(stride=(2, 1), padding=(0, 1))
    calls = []
    monkeypatch.setattr(backbones, "strided_max_pool", lambda *a: calls.append(1) or strided_max_pool(*a))
    x = torch.randn(2, 3, 8, 20)
    with torch.no_grad():
        read = pool(x)
    assert calls == [1] and torch.equal(read, torch.nn.functional.max_pool2d(x, 2, (2, 1), (0, 1)))
    # training: torch's kernel, whose backward gives each window's gradient to one input
    x.requires_grad_(True)
    pool(x).sum().backward()
    assert calls == [1] and x.grad.sum().item() == pytest.approx(2 * 3 * 4 * 21)
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0, 2.0}
    # a traced graph (what the ONNX exporter records) keeps torch's operator; tracing is deprecated but is still
    # how that exporter (dynamo=False, textrec/export.py) works
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14; DeprecationWarning in 2.11
        warnings.simplefilter("ignore", DeprecationWarning)
        assert "max_pool2d" in str(torch.jit.trace(pool, torch.randn(1, 1, 4, 6)).graph)
    with pytest.raises(RuntimeError):  # too small for the window: torch's own error
        with torch.no_grad():
            pool(torch.randn(1, 1, 1, 5))


@pytest.mark.parametrize("backbone", ["vgg", "resnet"])
def test_a_model_reads_the_same_with_either_pool(monkeypatch, backbone):
    channels = (4, 4, 8, 8, 8, 8, 16) if backbone == "vgg" else SMALL_RESNET
    model = CRNN(CRNNConfig(num_classes=5, backbone=backbone, channels=channels, hidden_size=8)).eval()
    images = torch.randn(3, 1, 32, 77)
    with torch.inference_mode():
        fast = model(images)
        monkeypatch.setattr(backbones, "strided_max_pool", lambda x, *_: pytest.fail("fast path taken"))
        monkeypatch.setattr(MaxPool, "forward", torch.nn.MaxPool2d.forward)
        assert torch.equal(fast, model(images))


def _input_drive(model: CRNN) -> float:
    """The standard deviation of the first recurrent layer's input products at initialisation."""
    with torch.no_grad():
        features = model.backbone(torch.rand(16, 1, 32, 100, generator=torch.Generator().manual_seed(1)))
        frames = features.squeeze(2).permute(2, 0, 1)
        return (frames @ model.sequence.weight_ih_l0.T).std().item()


@pytest.mark.parametrize("backbone, channels", [("vgg", (32, 64, 128, 128, 256, 256, 128)), ("resnet", (16, 32, 64, 128))])
def test_a_narrow_backbone_drives_the_first_recurrent_layer_as_vggs_512_wide_features_do(backbone, channels):
    # torch's init gives every input weight ±1/sqrt(H): 128-wide features drove the gates half as hard as
    # VGG's 512, and such models stayed on the CTC blank plateau (docs/model.md, "Backbones").
    torch.manual_seed(0)
    reference = CRNN(CRNNConfig(num_classes=37))
    torch.manual_seed(0)
    narrow = CRNN(CRNNConfig(num_classes=37, backbone=backbone, channels=channels))
    bound = 1 / 256**0.5
    for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
        assert bound * 0.99 < getattr(reference.sequence, name).abs().max() <= bound  # torch's, unchanged
        assert 2 * bound * 0.99 < getattr(narrow.sequence, name).abs().max() <= 2 * bound  # sqrt(512 / 128)
    assert narrow.sequence.weight_ih_l1.abs().max() <= bound  # the upper layer's input is 2H wide already
    assert _input_drive(narrow) == pytest.approx(_input_drive(reference), rel=0.15)
    torch.manual_seed(0)
    mapped = CRNN(CRNNConfig(num_classes=37, backbone=backbone, channels=channels, refine="add", input_map=True))
    assert mapped.sequence.weight_ih_l0.abs().max() <= bound  # the map sets the width: torch's init stays


def test_the_backbone_start_experiments_change_one_thing_each_and_restore_it(monkeypatch):
    """benchmarks/backbone_start.py: each variant builds the network it names; the ordinary one is back after it."""
    start = load_benchmark("backbone_start", monkeypatch)
    slim = CRNNConfig(num_classes=37, backbone="resnet", channels=(16, 32, 64, 128))

    def build(config=slim):
        torch.manual_seed(0)
        return CRNN(config)

    ordinary = build()
    bound = 1 / 256**0.5
    with start.variant("torch-init"):
        assert build().sequence.weight_ih_l0.abs().max() <= bound < ordinary.sequence.weight_ih_l0.abs().max()
    with start.variant("zero-init-residual"):
        blocks = [m for m in build().backbone.modules() if isinstance(m, backbones.BasicBlock)]
        assert len(blocks) == 11 and all(not b.body[-1].weight.any() for b in blocks)
    assert all(b.body[-1].weight.all() for b in ordinary.backbone.modules() if isinstance(b, backbones.BasicBlock))
    with start.variant("stem16"):
        model = build()
        assert model.backbone.features[0].out_channels == model.backbone.features[3].out_channels == 16
    with start.variant("blocks1111"):
        assert sum(isinstance(m, backbones.BasicBlock) for m in build().backbone.modules()) == 4
    with start.variant("out512"):
        model = build()
        assert model.backbone.out_channels == 512 and model.sequence.weight_ih_l0.shape[1] == 512
        assert model.sequence.weight_ih_l0.abs().max() <= bound  # 512 = 2 x hidden: torch's init
    for variant in start.VARIANTS:  # each built network reads, and the ordinary one is restored afterwards
        with start.variant(variant):
            assert build()(torch.rand(2, 1, 32, 64)).shape == (17, 2, 37)
    with start.variant("torch-init,stem16"):  # several at once
        model = build()
        assert model.backbone.features[0].out_channels == 16 and model.sequence.weight_ih_l0.abs().max() <= bound
    again = build()
    assert again.backbone.features[0].out_channels == 4 and again.backbone.out_channels == 128
    assert torch.equal(again.sequence.weight_ih_l0, ordinary.sequence.weight_ih_l0)
    for wrong in ("wider", "stem16,out512"):
        with pytest.raises(SystemExit, match="unknown variant|choose one"):
            with start.variant(wrong):
                pass
