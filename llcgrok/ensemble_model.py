"""Models of one architecture as one: stacked weights, their vectorised forward, and the
evaluation of every member at once (:mod:`llcgrok.ensemble` trains them).

The forward pass is ``vmap`` of ``functional_call`` over the very :class:`GrokTransformer`
that ``train()`` uses, so each member computes what its own model would, up to float
rounding (batched matrix products sum in another order).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .device import math_attention
from .model import GrokTransformer


class EnsembleModel:
    """Stacked weights of ``S`` models of one architecture and their vectorised forward.

    ``params[name]`` has shape ``(S, *shape)``; ``forward(inputs)`` maps ``(S, B, T)``
    token rows to ``(S, B, C)`` logits.
    """

    def __init__(self, models: Sequence[GrokTransformer], attention: str = "auto"):
        if attention not in ("auto", "math", "fused"):
            raise ValueError(f"attention must be 'auto', 'math' or 'fused', got {attention!r}")
        self.template = models[0]
        self.params, self.buffers = stack_module_state(list(models))
        self._skeleton = copy.deepcopy(models[0]).to("meta")
        self.size = len(models)
        self.device = next(iter(self.params.values())).device
        # "auto" is the math path everywhere: the fused CPU kernel has no vmap rule, and on
        # CUDA (torch 2.11, H100) the fused kernel's backward under vmap fails with "LSE is
        # not correctly aligned"; the math path gave the 1.9-2.35x ensemble speed-up there.
        self.use_math = attention in ("math", "auto")

        def one(params, buffers, x):
            return functional_call(self._skeleton, (params, buffers), (x,))

        self._forward = vmap(one)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        ctx = math_attention() if self.use_math else contextlib.nullcontext()
        with ctx:
            return self._forward(self.params, self.buffers, inputs)

    __call__ = forward

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        return {name: value[member].detach().clone() for name, value in {**self.params, **self.buffers}.items()}

    def member(self, index: int, device: torch.device | str | None = None) -> GrokTransformer:
        """A standalone model holding member ``index``'s current weights."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(self.state_dict(index))
        return model.to(device or self.device)



@torch.inference_mode()
def _evaluate_members(model: EnsembleModel, inputs, targets, draws, due, chunk: int) -> tuple[list, list]:
    """Per member, mean loss and accuracy over ``inputs[m][draws[m]]`` (draws with
    replacement), each distinct row evaluated once and weighted by its count. Members not
    ``due`` get weight 0 everywhere (their numbers are discarded)."""
    size, n = inputs.shape[0], inputs.shape[1]
    counts = torch.zeros(size, n, device=inputs.device)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=counts.dtype))
    counts[~due] = 0
    present = counts > 0
    width = max(int(present.sum(1).max().item()), 1)
    # Distinct rows first (stable sort on "absent"), padded to a common width with weight 0.
    order = torch.sort((~present).to(torch.int8), dim=1, stable=True).indices[:, :width]
    weights = counts.gather(1, order)
    members = torch.arange(size, device=inputs.device).unsqueeze(1)
    rows, tgts = inputs[members, order], targets[members, order]
    loss_sum = torch.zeros(size, device=inputs.device)
    correct = torch.zeros(size, device=inputs.device)
    for start in range(0, width, chunk):
        logits = model(rows[:, start : start + chunk])
        tgt, w = tgts[:, start : start + chunk], weights[:, start : start + chunk]
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none").view_as(w)
        loss_sum += (loss * w).sum(1)
        correct += ((logits.argmax(-1) == tgt).to(w.dtype) * w).sum(1)
    total = counts.sum(1).clamp_min(1)
    return (loss_sum / total).tolist(), (correct / total).tolist()
