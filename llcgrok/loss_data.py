"""What an estimate evaluates: the loss as devinterp's ``evaluate(model, batch)``, the data
as a torch Dataset, the mean loss over all of it, and the theory's n*beta = n / log n.

The estimator (:mod:`llcgrok.llc`), curvature (:mod:`llcgrok.curvature`) and calibration
share these, so that every number of one model is taken on the same loss and data.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

LossSpec = Union[str, Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]]
DataSpec = Union[tuple, Dataset]


def _evaluate_ce(model: torch.nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _evaluate_mse(model: torch.nn.Module, batch) -> torch.Tensor:
    outputs, targets = model(batch[0]), batch[1].to(model_dtype(model))
    if outputs.shape != targets.shape and outputs.numel() == targets.numel():
        targets = targets.reshape(outputs.shape)  # (B,) targets for a (B, 1) output
    return F.mse_loss(outputs, targets)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return torch.get_default_dtype()


class _CallableLoss:
    """Adapts ``loss(model, inputs, targets)`` to devinterp's ``evaluate(model, batch)``."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return self.fn(model, batch[0], batch[1])


def make_evaluate(loss: LossSpec) -> Callable:
    if callable(loss):
        return _CallableLoss(loss)
    if loss == "ce":
        return _evaluate_ce
    if loss == "mse":
        return _evaluate_mse
    raise ValueError(f"loss must be 'ce', 'mse' or a callable (model, inputs, targets) -> loss, got {loss!r}")


def as_dataset(data: DataSpec) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
        if len(inputs) != len(targets):
            raise ValueError(f"data: {len(inputs)} inputs but {len(targets)} targets")
        return TensorDataset(inputs, targets)
    raise TypeError("data must be an (inputs, targets) tuple of tensors or a torch Dataset of (input, target) pairs")


def _chunks(data: Dataset, size: int):
    if isinstance(data, TensorDataset):
        for start in range(0, len(data), size):
            yield tuple(t[start : start + size] for t in data.tensors)
    else:
        yield from DataLoader(data, batch_size=size, shuffle=False)


def full_loss(model: torch.nn.Module, data: Dataset, evaluate: Callable, device: torch.device, chunk: int = 4096) -> tuple[float, int | None]:
    """Mean loss over all of ``data`` (each chunk weighted by its size), and the number of
    output classes seen (for the cross-entropy chance level). Train mode, as in sampling."""
    was_training = model.training
    model.train()
    total, count, classes = 0.0, 0, None
    with torch.no_grad():
        for batch in _chunks(data, chunk):
            batch = [t.to(device) for t in batch]
            total += float(evaluate(model, batch)) * len(batch[0])
            count += len(batch[0])
            if classes is None and evaluate is _evaluate_ce:
                classes = int(model(batch[0][:1]).shape[-1])
    model.train(was_training)
    return total / count, classes


def default_nbeta(n: int) -> float:
    """n / log n, the theory's inverse temperature for n examples."""
    if n < 2:
        raise ValueError(f"n*beta = n / log n needs at least 2 examples, got {n}")
    return n / math.log(n)
