"""Checkpoints of every model kind: what one holds, and one reader for all of them.

A checkpoint is a torch file of one dict::

    format        CHECKPOINT_FORMAT (a "grok" transformer) or SEQ_CHECKPOINT_FORMAT (a "tiny" one)
    step          the training step
    model_config  the model's config dataclass, as a dict
    model_kwargs  its builder's other arguments (``model.init_kwargs()``: the shapes)
    run_config    the run's config, as a dict (a RunConfig's or a SeqConfig's)
    state_dict    the weights, on the CPU

Both formats have held these keys since their first version and differ only in the format
name, which says which registered model (:mod:`llcgrok.models`) rebuilds the weights: every
checkpoint of an earlier version loads, and a new one has the same bytes as in earlier
versions. :func:`llcgrok.runs.save_checkpoint` writes :func:`checkpoint_payload` atomically
(the run directory owns atomic writes); :func:`load_checkpoint` reads either format.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch

from .models import get_model, kind_of

CHECKPOINT_FORMAT = "llcgrok-checkpoint-v1"
SEQ_CHECKPOINT_FORMAT = "llcgrok-seq-checkpoint-v1"
FORMATS = {"grok": CHECKPOINT_FORMAT, "tiny": SEQ_CHECKPOINT_FORMAT}  # model kind -> the format of its checkpoints
_WHAT = {None: "an llcgrok", "grok": "a modular-task", "tiny": "a sequence-task"}  # what a wrong file is not


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read; the message names the file."""


def checkpoint_payload(model: torch.nn.Module, step: int, run_config: Mapping) -> dict:
    """The dict a checkpoint of ``model`` (any registered kind) at ``step`` holds."""
    return {
        "format": FORMATS[kind_of(model)],
        "step": int(step),
        "model_config": dataclasses.asdict(model.cfg),
        "model_kwargs": model.init_kwargs(),
        "run_config": run_config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def torch_load(path: Path, device: str | torch.device = "cpu") -> Any:
    """A checkpoint file's contents (tensors and plain values only), or one CheckpointError line."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except Exception as exc:  # torch raises several types for damaged zip archives
        # Only the type: torch's messages span lines and may advise weights_only=False.
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    model_kind: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model stored at ``path``, of any registered kind (or of ``model_kind``
    only). Returns ``(model, info)``; ``info`` holds ``step`` and ``run_config`` (a dict).
    Needs no params file."""
    path = Path(path)
    blob = torch_load(path, device)
    accepted = {fmt: kind for kind, fmt in FORMATS.items() if model_kind in (None, kind)}
    kind = accepted.get(blob.get("format")) if isinstance(blob, dict) else None
    if kind is None:
        raise CheckpointError(f"{path}: not {_WHAT[model_kind]} checkpoint")
    entry = get_model(kind)
    try:
        model = entry.build(entry.config(**blob["model_config"]), **blob["model_kwargs"])
        model.load_state_dict(blob["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: weights do not fit the stored model config ({first})") from None
    return model.to(device), {"step": int(blob["step"]), "run_config": blob["run_config"]}
