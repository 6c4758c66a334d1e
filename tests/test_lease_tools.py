"""The GPU lease's own checks that can run without a GPU (tools/device_check.py, the documented TRAIN_ARGS)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from textrec.checkpoint import load_checkpoint
from textrec.model import CRNN
from textrec.transfer import refines_vanilla

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import device_check  # noqa: E402


def documented_train_args() -> str:
    """The TRAIN_ARGS of the next lease's command in docs/model.md."""
    (found,) = re.findall(r'TRAIN_ARGS="([^"]*)"\s*\\?\s*bash tools/gpu_lease\.sh', (ROOT / "docs" / "model.md").read_text())
    return found


def test_the_next_lease_refines_the_shipped_model_from_exactly_where_it_is():
    shipped = load_checkpoint(ROOT / "checkpoints" / "default.safetensors")
    refined = device_check.refined_config(shipped.model_config, documented_train_args())
    assert refined is not None and refined.refine != "none"
    # --init-from accepts it: the same network with refined gates that start as vanilla ...
    assert refines_vanilla(shipped.model_config.full_dict(), refined.full_dict())
    # ... and with the shipped weights (projections at zero) it reads exactly what the shipped model reads.
    vanilla, model = shipped.build_model().eval(), CRNN(refined).eval()
    model.load_state_dict({**model.state_dict(), **shipped.state_dict})
    images = torch.rand(2, 1, 32, 160) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(images), vanilla(images), atol=1e-5)


def test_refined_config_reads_only_the_refine_options():
    shipped = load_checkpoint(ROOT / "checkpoints" / "default.safetensors").model_config
    assert device_check.refined_config(shipped, "") is None
    assert device_check.refined_config(shipped, "--lr 1e-4") is None
    config = device_check.refined_config(shipped, "--lr 1e-4 --refine mul --refine-gates i")
    assert (config.refine, config.refine_gates, config.refine_init, config.refine_bound) == ("mul", ("i",), "default", "none")
