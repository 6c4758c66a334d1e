"""Which way up a word crop is: a linear probe on the recognizer's own features, stored in its checkpoint.

The recognizer's scores alone cannot tell: it reads many words upside down with a fair path probability
(`ku6unu`, 0.55; `20p` upside down reads `doz` at 0.96). PP-OCR adds a separate 180-degree classifier; a small
CNN of that kind trained here on the 6.4 k real training crops (CPU, 3,000 steps) told the two apart on 85.5 %
of the validation crops and 92.3 % of IC13's. A logistic regression on the features the recognizer computes
anyway (the backbone's and the recurrent layers' outputs, averaged and max-pooled over the frames) does better
(90.9 % and 96.4 %) and costs nothing: the features come out of the same forward pass as the read
(docs/orientation.md has the measurements).

`fit_orientation_probe` fits it on word crops shown both ways up (`textrec calibrate --orientation-data`);
`OrientationProbe` is stored in the checkpoint's metadata; `Recognizer.read` combines its logit with the
recognizer's log path probabilities of the two ways up (`textrec.predict.Orientation`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from PIL import Image

from .errors import DataError

METHOD = "logistic-on-pooled-features"
# The probe's input: per crop, the backbone features and the recurrent outputs, each averaged and max-pooled
# over the frames (2 x backbone width + 2 x recurrent output width numbers).
FEATURES = "backbone mean, backbone max, sequence mean, sequence max"


def forward_with_features(model, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (T, B, C), pooled features (B, F)) of a CRNN in one pass."""
    features = model.backbone(batch).squeeze(2)  # (B, C, T)
    sequence, _ = model.sequence(features.permute(2, 0, 1).contiguous())  # (T, B, 2H)
    pooled = torch.cat([features.mean(2), features.amax(2), sequence.mean(0), sequence.amax(0)], dim=1)
    return model.head(sequence), pooled


def feature_width(model_config) -> int:
    """How many pooled features a CRNN of this config gives (the probe's weight length)."""
    return 2 * model_config.channels[-1] + 2 * 2 * model_config.hidden_size


@dataclass(frozen=True)
class OrientationProbe:
    """logit(P(upside down)) = weight . features + bias, over `forward_with_features`' pooled features."""

    weight: tuple[float, ...]
    bias: float
    samples: int = 0
    data: str = ""
    accuracy: float = math.nan  # % of the fit's crops (each shown both ways up) it classifies right
    method: str = METHOD

    def __post_init__(self):
        if self.method != METHOD:
            raise ValueError(f"unknown orientation probe method {self.method!r} (this textrec knows {METHOD!r})")
        if not isinstance(self.weight, (list, tuple)) or not 1 <= len(self.weight) <= 1 << 16:
            raise ValueError("orientation weight must be a list of 1 to 65536 numbers")
        values = [*self.weight, self.bias]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError("orientation weight and bias must be finite numbers")
        object.__setattr__(self, "weight", tuple(float(w) for w in self.weight))

    def logits(self, features: torch.Tensor) -> list[float]:
        weight = torch.tensor(self.weight, dtype=features.dtype, device=features.device)
        return (features @ weight + self.bias).float().cpu().tolist()

    def to_dict(self) -> dict:
        values = asdict(self)
        values["weight"] = [round(w, 7) for w in self.weight]
        values["accuracy"] = None if math.isnan(self.accuracy) else self.accuracy
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "OrientationProbe":
        if not isinstance(values, dict):
            raise ValueError(f"orientation is {type(values).__name__} (expected an object)")
        values = dict(values)
        if values.get("accuracy") is None:
            values["accuracy"] = math.nan
        return cls(**values)


def fit_orientation_probe(
    features_of: Callable[[Sequence[Image.Image]], torch.Tensor],
    crops: Sequence[Image.Image],
    data: str = "",
    l2: float = 1e-2,
) -> OrientationProbe:
    """Logistic regression of "upside down" on the pooled features of every crop shown upright and turned by
    180 degrees. `features_of(images)` returns their (N, F) features (`Recognizer.features`). The inputs are
    standardised for the fit (with an L2 penalty `l2` on the standardised weights) and the scaling is folded
    into the stored weights. DataError when there are fewer than 20 crops."""
    if len(crops) < 20:
        raise DataError(f"{data or 'orientation data'}: {len(crops)} readable crops; the probe needs at least 20")
    upright = features_of(crops).double()
    turned = features_of([c.transpose(Image.Transpose.ROTATE_180) for c in crops]).double()
    x = torch.cat([upright, turned])
    y = torch.cat([torch.zeros(len(upright)), torch.ones(len(turned))]).double()
    mean, std = x.mean(0), x.std(0) + 1e-5
    z = (x - mean) / std
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(x.shape[1], generator=generator, dtype=torch.float64) * 1e-3).requires_grad_()
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    folded = (weight / std).detach()
    folded_bias = float((bias - (weight * mean / std).sum()).detach())
    accuracy = 100.0 * float(((x @ folded + folded_bias > 0).double() == y).double().mean())
    return OrientationProbe(tuple(folded.tolist()), folded_bias, len(crops), data, accuracy)
