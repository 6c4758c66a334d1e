"""CRNN: a convolutional backbone (VGG or ResNet), bidirectional recurrent layers (vanilla or refined gates) and a linear CTC head."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ..nn import GatedRNN
from .backbones import BACKBONES, VGG_CHANNELS
# Config keys that came after the first checkpoint format, with the values that reproduce it.
OPTIONAL_DEFAULTS = {"refine_init": "default", "refine_bound": "none", "forget_bias": 0.0, "input_map": False, "refine_rank": 0}


@dataclass(frozen=True)
class CRNNConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    num_classes: int
    backbone: str = "vgg"
    in_channels: int = 1
    channels: tuple[int, ...] = VGG_CHANNELS
    rnn: str = "lstm"
    refine: str = "none"
    # Which sigmoid gates are refined (e.g. ("i", "o")); None: all of the unit's.
    refine_gates: tuple[str, ...] | None = None
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    # Refined-gate variants (docs/refined_gates.md, "Variants"); the defaults are the first
    # implementation's behaviour, so checkpoints written before these keys existed load unchanged.
    refine_init: str = "default"  # "vanilla": start-as-vanilla (zero projection; "mul" uses 1 + x̃)
    refine_bound: str = "none"  # "tanh": x̃ = tanh(W_refine x)
    forget_bias: float = 0.0  # set at init: the bias of the gate that keeps the state (LSTM f)
    input_map: bool = False  # a linear map before each recurrent layer, so x̃ = x_t exactly
    refine_rank: int = 0  # 0: full projections; r: low-rank W_up W_down (r < hidden_size)

    def to_dict(self) -> dict:
        """The config as JSON-ready values. Keys added after the first format are left out while
        they hold their defaults, so a checkpoint of an older architecture stays readable by
        older textrec versions (which refuse unknown keys)."""
        values = asdict(self)
        values["channels"] = list(self.channels)
        if self.refine_gates is not None:
            values["refine_gates"] = list(self.refine_gates)
        for key, default in OPTIONAL_DEFAULTS.items():
            if values[key] == default:
                del values[key]
        return values

    def full_dict(self) -> dict:
        """Every key, defaults included (for comparing two configs)."""
        values = asdict(self)
        values["channels"] = list(self.channels)
        if self.refine_gates is not None:
            values["refine_gates"] = list(self.refine_gates)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "CRNNConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        values = dict(values)
        if "channels" in values:
            values["channels"] = tuple(values["channels"])
        if values.get("refine_gates") is not None:
            values["refine_gates"] = tuple(values["refine_gates"])
        return cls(**values)


class CRNN(nn.Module):
    """Images (B, C, H, W) -> per-frame class logits (T, B, num_classes), T = W/4 + 1 for either backbone."""

    def __init__(self, config: CRNNConfig):
        super().__init__()
        if config.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {config.backbone!r}; choose one of {', '.join(BACKBONES)}")
        self.config = config
        self.backbone = BACKBONES[config.backbone][0](config.in_channels, config.channels)
        self.sequence = GatedRNN(
            config.rnn,
            self.backbone.out_channels,
            config.hidden_size,
            num_layers=config.num_layers,
            bidirectional=True,
            refine=config.refine,
            refine_gates=config.refine_gates,
            dropout=config.dropout,
            refine_init=config.refine_init,
            refine_bound=config.refine_bound,
            forget_bias=config.forget_bias,
            input_map=config.input_map,
            refine_rank=config.refine_rank,
        )
        self.head = nn.Linear(2 * config.hidden_size, config.num_classes)
        self._match_input_drive()

    def _match_input_drive(self) -> None:
        """Scale the first recurrent layer's input weights as if its input were 2 x hidden wide.

        torch's initialisation draws every weight in ±1/sqrt(hidden), whatever the input width, so
        the gates' drive from the input grows with the square root of that width. The upper layer
        of a bidirectional stack, and the first behind VGG's 512-wide features (hidden 256), see
        2 x hidden inputs; a narrower backbone (a 128-wide last layer) gave half the drive, and
        such a model stayed on the CTC blank plateau far longer (docs/model.md, "Backbones").
        Models whose first input is 2 x hidden wide, or that map it (input_map), are unchanged.
        """
        width, target = self.backbone.out_channels, 2 * self.config.hidden_size
        if width == target or self.config.input_map:
            return
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
                getattr(self.sequence, name).mul_(math.sqrt(target / width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)  # (B, C, 1, T)
        sequence = features.squeeze(2).permute(2, 0, 1).contiguous()  # (T, B, C)
        output, _ = self.sequence(sequence)
        return self.head(output)

    def output_length(self, width: int) -> int:
        """Frames the model emits for an input of this width."""
        return self.backbone.output_width(width)
