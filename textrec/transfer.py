"""Start a model from another checkpoint's weights (`textrec train --init-from`).

Cumulative training: each GPU lease continues from the last shipped model instead of starting
over. The architecture must match; the charset may grow. One architecture change is allowed: a
vanilla-gate checkpoint may start a refined model that starts as vanilla (`refine_init =
"vanilla"`): every shared tensor is copied and the refinement's projections keep their zero
initialisation, so the new network computes exactly what the old one did until training moves
them. Rows of the CTC head are mapped by
character: a character the old model knew keeps its row; an upper-case letter new to a
case-insensitive model starts as a copy of its lower-case row (the old model already fires on
both shapes for it, and training only has to tell them apart); any other new character gets
the fresh initialisation with the lowest bias of the old rows, so it does not fire until
training gives it a reason to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .charset import Charset
from .checkpoint import Checkpoint, describe_config_difference, load_weights
from .errors import CheckpointError
from .model import CRNN

HEAD_KEYS = ("head.weight", "head.bias")
# Config keys in which a refined start-as-vanilla model may differ from its vanilla source.
REFINEMENT_KEYS = ("refine", "refine_gates", "refine_init", "refine_bound")


@dataclass
class TransferReport:
    """How the head rows were filled, for the caller to show and to record in the new checkpoint."""

    source: str
    kept: int  # characters whose row was copied as it was
    from_lower: str = ""  # upper-case letters started from their lower-case row
    new: str = ""  # characters that start untrained
    dropped: str = ""  # characters of the old charset the new one lacks
    samples_seen: int = 0  # training samples behind the source checkpoint, its own lineage included
    lineage: list[dict] = field(default_factory=list)
    # Tensors the source lacks that keep their fresh values: the projections of refined gates
    # that start as vanilla (zero, so the outputs do not change).
    fresh: list[str] = field(default_factory=list)


def samples_behind(checkpoint: Checkpoint) -> int:
    """Training samples that produced a checkpoint: its run's steps x batch, plus what that run started from."""
    info = checkpoint.info
    if "samples_seen" in info:
        return int(info["samples_seen"])
    config = info.get("train_config", {})
    return int(info.get("step", 0)) * int(config.get("batch_size", 0))


def transfer_weights(model: CRNN, charset: Charset, checkpoint: Checkpoint) -> TransferReport:
    """Load `checkpoint` into `model` (whose charset is `charset`); CheckpointError if the architectures differ."""
    old_config = checkpoint.model_config.full_dict()
    new_config = model.config.full_dict()
    old_config.pop("num_classes")
    new_config.pop("num_classes")
    fresh: list[str] = []
    if old_config != new_config:
        if not refines_vanilla(old_config, new_config):
            hint = ""
            if _same_but_refinement(old_config, new_config) and old_config["refine"] == "none":
                hint = "; a vanilla checkpoint can start a refined model only with refine_init='vanilla'"
            raise CheckpointError(
                f"{checkpoint.source}: cannot start from this checkpoint, its architecture differs "
                f"({describe_config_difference(old_config, new_config)}){hint}"
            )
        fresh = sorted(k for k in model.state_dict() if k.startswith("sequence.weight_refine") and k not in checkpoint.state_dict)
    state = dict(checkpoint.state_dict)
    own = model.state_dict()
    body = {k: v for k, v in state.items() if k not in HEAD_KEYS}
    load_weights_partial(model, body, checkpoint.source, keep=fresh)

    old_chars = checkpoint.charset.chars
    old_index = {c: i + 1 for i, c in enumerate(old_chars)}
    weight, bias = state["head.weight"].float(), state["head.bias"].float()
    new_weight, new_bias = own["head.weight"].clone().float(), own["head.bias"].clone().float()
    floor = bias[1:].min() if len(old_chars) else bias[0]
    new_weight[0], new_bias[0] = weight[0], bias[0]  # the CTC blank
    report = TransferReport(source=checkpoint.source, kept=0, fresh=fresh)
    for k, c in enumerate(charset.chars, start=1):
        if c in old_index:
            row = old_index[c]
            report.kept += 1
        elif not checkpoint.charset.case_sensitive and c.lower() in old_index:
            row = old_index[c.lower()]
            report.from_lower += c
        else:
            new_bias[k] = floor
            report.new += c
            continue
        new_weight[k], new_bias[k] = weight[row], bias[row]
    report.dropped = "".join(c for c in old_chars if c not in charset.chars and c.upper() not in charset.chars)
    with torch.no_grad():
        model.head.weight.copy_(new_weight)
        model.head.bias.copy_(new_bias)
    report.samples_seen = samples_behind(checkpoint)
    previous = list(checkpoint.info.get("lineage", []))
    entry = {
        "checkpoint": checkpoint.source,
        "step": checkpoint.info.get("step"),
        "samples_seen": report.samples_seen,
        "charset": old_chars,
    }
    seed = checkpoint.info.get("train_config", {}).get("seed")
    if seed is not None:  # the samples a run draws are a function of its seed (and step): see `seeds_behind`
        entry["seed"] = int(seed)
    previous.append(entry)
    report.lineage = previous
    return report


def seeds_behind(lineage: list[dict]) -> set[int]:
    """The seeds of the runs recorded in a lineage (runs before this record kept them in no entry).

    A run that starts from step 0 with one of them draws what that run drew: the same synthetic texts, fonts
    and scene parameters, and the real data in the same order (textrec.data.training)."""
    return {int(entry["seed"]) for entry in lineage if entry.get("seed") is not None}


def refines_vanilla(old: dict, new: dict) -> bool:
    """Whether `new` (a full model config) is `old`'s vanilla network with refined gates that start as vanilla."""
    return (
        old["refine"] == "none"
        and new["refine"] != "none"
        and new["refine_init"] == "vanilla"
        and _same_but_refinement(old, new)
    )


def _same_but_refinement(old: dict, new: dict) -> bool:
    strip = lambda config: {k: v for k, v in config.items() if k not in REFINEMENT_KEYS}  # noqa: E731
    return strip(old) == strip(new)


def load_weights_partial(
    model: torch.nn.Module, state: dict[str, torch.Tensor], where: str, keep: list[str] | tuple[str, ...] = ()
) -> None:
    """Load every tensor but the head (and the `keep` names) strictly, leaving those as they are."""
    own = {k: v for k, v in model.state_dict().items() if k in HEAD_KEYS or k in keep}
    load_weights(model, {**state, **own}, where)
