"""Start a model from another checkpoint's weights (`textrec train --init-from`).

Cumulative training: each GPU lease continues from the last shipped model instead of starting
over. The architecture must match; the charset may grow. One architecture change is allowed: a
vanilla-gate checkpoint may start a refined model that starts as vanilla (`refine_init =
"vanilla"`): every shared tensor is copied and the refinement's projections keep their zero
initialisation, so the new network computes exactly what the old one did until training moves
them. Another: a refined checkpoint may start the same model with its projections at another rank
(`refine_rank`): each projection ``W_refine`` (the product of its factors, if it has them) is
factored by a truncated SVD into ``W_up W_down`` with the singular values split evenly between the two,
the best approximation of that rank (or multiplied out, for a full projection). Rows of the CTC head are mapped by
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
REFINEMENT_KEYS = ("refine", "refine_gates", "refine_init", "refine_bound", "refine_rank")


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
    # With a change of refine_rank: the new rank (0: full) and the share of the projections' squared
    # singular values (energy) the new ones keep, summed over all of them (1.0 when nothing is cut).
    rank: int | None = None
    rank_energy: float = 1.0


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
    state = dict(checkpoint.state_dict)
    rank_change = old_config != new_config and changes_rank(old_config, new_config)
    if rank_change:
        state, energy = refactor_projections(state, model.sequence)
    elif old_config != new_config:
        if not refines_vanilla(old_config, new_config):
            hint = ""
            if _same_but_refinement(old_config, new_config) and old_config["refine"] == "none":
                hint = "; a vanilla checkpoint can start a refined model only with refine_init='vanilla'"
            raise CheckpointError(
                f"{checkpoint.source}: cannot start from this checkpoint, its architecture differs "
                f"({describe_config_difference(old_config, new_config)}){hint}"
            )
        fresh = sorted(k for k in model.state_dict() if k.startswith("sequence.weight_refine") and k not in checkpoint.state_dict)
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
    if rank_change:
        report.rank, report.rank_energy = new_config["refine_rank"], energy
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


def describe_rank_change(rank: int, energy_kept: float) -> str:
    """How a change of `refine_rank` is reported (`textrec train --init-from`, `textrec export --refine-rank`)."""
    if not rank:
        return "refined projections multiplied out to full rank"
    return f"refined projections at rank {rank} ({energy_kept:.0%} of their energy kept)"


def changes_rank(old: dict, new: dict) -> bool:
    """Whether `new` is `old`'s refined network with its projections at another rank (`refine_rank`)."""
    strip = lambda config: {k: v for k, v in config.items() if k != "refine_rank"}  # noqa: E731
    return old["refine"] != "none" and strip(old) == strip(new) and old.get("refine_rank", 0) != new["refine_rank"]


def refactor_projections(state: dict[str, torch.Tensor], rnn) -> tuple[dict[str, torch.Tensor], float]:
    """`state` with its refined projections at `rnn`'s rank: each full projection W (the product of its
    factors, where it has them) becomes W itself (rank 0) or ``W_up W_down`` by a truncated SVD, with the
    singular values split evenly (``U √S``, ``√S Vᵀ``). Returns the new state and the share of the
    squared singular values kept over all projections."""
    state = dict(state)
    rank, kept, total = rnn.refine_rank, 0.0, 0.0
    for name, weight in rnn.named_parameters():
        if not name.startswith("weight_refine") or name.startswith("weight_refine_down"):
            continue
        key, down_key = f"sequence.{name}", f"sequence.{name.replace('weight_refine', 'weight_refine_down')}"
        full = state.pop(key).double()
        down = state.pop(down_key, None)
        if down is not None:
            full = full @ down.double()
        if not rank:
            state[key] = full.to(weight.dtype)
            continue
        U, S, Vh = torch.linalg.svd(full, full_matrices=False)
        root = S[:rank].sqrt()
        state[key] = (U[:, :rank] * root).to(weight.dtype)
        state[down_key] = (root[:, None] * Vh[:rank]).to(weight.dtype)
        kept, total = kept + float((S[:rank] ** 2).sum()), total + float((S**2).sum())
    return state, (kept / total if total else 1.0)


def _same_but_refinement(old: dict, new: dict) -> bool:
    strip = lambda config: {k: v for k, v in config.items() if k not in REFINEMENT_KEYS}  # noqa: E731
    return strip(old) == strip(new)


def load_weights_partial(
    model: torch.nn.Module, state: dict[str, torch.Tensor], where: str, keep: list[str] | tuple[str, ...] = ()
) -> None:
    """Load every tensor but the head (and the `keep` names) strictly, leaving those as they are."""
    own = {k: v for k, v in model.state_dict().items() if k in HEAD_KEYS or k in keep}
    load_weights(model, {**state, **own}, where)
