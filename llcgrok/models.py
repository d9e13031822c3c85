"""The model registry: every kind of model a run trains, by the name the params format
gives it (``model.kind``), with its class, its config dataclass and its builder.

``"grok"`` is the reference transformer of the modular tasks (:mod:`llcgrok.model`),
``"tiny"`` the low-rank transformer of the sequence tasks (:mod:`llcgrok.tiny`). A
checkpoint stores a model's config and its builder's other arguments
(``model.init_kwargs()``), so :func:`build` rebuilds it without the params file
(:mod:`llcgrok.checkpoints`). A task names the kind it trains (:mod:`llcgrok.taskspec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config_sections import ModelConfig
from .model import GrokTransformer, build_model
from .tiny import TinyConfig, TinyTransformer, build_tiny


@dataclass(frozen=True)
class ModelKind:
    name: str
    cls: type  # the torch module it builds
    config: type  # its config dataclass: ``config(**dataclasses.asdict(model.cfg))`` rebuilds ``model.cfg``
    build: Callable[..., torch.nn.Module]  # build(config, **model.init_kwargs())


MODELS: dict[str, ModelKind] = {
    "grok": ModelKind("grok", GrokTransformer, ModelConfig, build_model),
    "tiny": ModelKind("tiny", TinyTransformer, TinyConfig, build_tiny),
}


def get_model(name: str) -> ModelKind:
    if name not in MODELS:
        raise ValueError(f"unknown model kind {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def build(kind: str, cfg, **kwargs) -> torch.nn.Module:
    """A new model of the registered ``kind`` from its config and its builder's other
    arguments (the shapes: vocabulary, sequence length, outputs)."""
    return get_model(kind).build(cfg, **kwargs)


def kind_of(model: torch.nn.Module) -> str:
    """The registered kind ``model`` is an instance of."""
    for kind in MODELS.values():
        if isinstance(model, kind.cls):
            return kind.name
    raise TypeError(f"{type(model).__name__} is no registered model kind ({', '.join(MODELS)})")
