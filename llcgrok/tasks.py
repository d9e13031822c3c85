"""Algorithmic datasets in the reference token layout.

Every example is 4 tokens ``[a, o, b, =]``. The vocabulary is the two symbols ``o``
(token 0) and ``=`` (token 1) followed by the group elements (element i is token i + 2);
the label is the index of the result among the group elements only.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .config_sections import ConfigError, TaskConfig
from .config_validation import is_prime

OP_TOKEN = 0
EQ_TOKEN = 1
NUM_SYMBOLS = 2
SEQ_LEN = 4


@dataclass
class TaskData:
    """Train/validation tensors of one task, plus the sizes a model needs."""

    name: str
    train_inputs: torch.Tensor  # (n_train, 4) int64 tokens
    train_targets: torch.Tensor  # (n_train,) int64 class over group elements
    val_inputs: torch.Tensor
    val_targets: torch.Tensor
    num_classes: int  # group elements, the output size

    @property
    def vocab_size(self) -> int:
        return self.num_classes + NUM_SYMBOLS

    @property
    def seq_len(self) -> int:
        return SEQ_LEN

    @property
    def num_pairs(self) -> int:
        return len(self.train_targets) + len(self.val_targets)

    def to(self, device) -> "TaskData":
        return TaskData(
            self.name,
            self.train_inputs.to(device),
            self.train_targets.to(device),
            self.val_inputs.to(device),
            self.val_targets.to(device),
            self.num_classes,
        )


def permutations_of(k: int) -> list[tuple[int, ...]]:
    return list(itertools.permutations(range(k)))


def all_pairs(cfg: TaskConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Every (a, b, a op b) of the task as element indices, in a fixed order."""
    if cfg.name == "permutation":
        elements = permutations_of(cfg.k)
        index = {perm: i for i, perm in enumerate(elements)}
        n = len(elements)
        a_idx, b_idx, c_idx = [], [], []
        for (ia, pa), (ib, pb) in itertools.product(enumerate(elements), repeat=2):
            composed = tuple(pa[pb[i]] for i in range(cfg.k))  # (a o b)(i) = a(b(i))
            a_idx.append(ia)
            b_idx.append(ib)
            c_idx.append(index[composed])
        return torch.tensor(a_idx), torch.tensor(b_idx), torch.tensor(c_idx), n

    p = cfg.p
    if cfg.name == "x_div_y":
        if not is_prime(p):
            raise ConfigError(f"task.p must be prime for x_div_y, got {p}")
        a, b = torch.meshgrid(torch.arange(p), torch.arange(1, p), indexing="ij")
        a, b = a.reshape(-1), b.reshape(-1)
        inverse = torch.tensor([pow(int(x), p - 2, p) for x in range(p)])
        return a, b, (a * inverse[b]) % p, p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if cfg.name == "x_plus_y":
        return a, b, (a + b) % p, p
    if cfg.name == "x_minus_y":
        return a, b, (a - b) % p, p
    if cfg.name == "x_times_y":
        return a, b, (a * b) % p, p
    if cfg.name == "x2_plus_y2":
        return a, b, (a * a + b * b) % p, p
    if cfg.name == "x3_plus_xy":
        return a, b, (a * a * a + a * b) % p, p
    raise ConfigError(f"task.name: unknown task {cfg.name!r}")


def encode(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element indices -> token rows ``[a, o, b, =]``."""
    n = len(a)
    return torch.stack(
        [a + NUM_SYMBOLS, torch.full((n,), OP_TOKEN), b + NUM_SYMBOLS, torch.full((n,), EQ_TOKEN)], dim=1
    ).long()


def make_task(cfg: TaskConfig, seed: int = 0) -> TaskData:
    """Build the task and split it: shuffle all pairs, the first fraction trains.

    The shuffle uses ``cfg.split_seed``, or ``seed`` (the run seed) when it is None.
    """
    a, b, c, n_elements = all_pairs(cfg)
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    order = torch.randperm(len(a), generator=torch.Generator().manual_seed(split_seed))
    n_train = int(len(a) * cfg.training_fraction)
    if n_train == 0 or n_train == len(a):
        raise ConfigError(f"task.training_fraction {cfg.training_fraction} leaves an empty split of {len(a)} pairs")
    inputs, targets = encode(a, b)[order], c[order].long()
    return TaskData(
        name=cfg.name,
        train_inputs=inputs[:n_train],
        train_targets=targets[:n_train],
        val_inputs=inputs[n_train:],
        val_targets=targets[n_train:],
        num_classes=n_elements,
    )


def num_classes_for(cfg: TaskConfig) -> int:
    return math.factorial(cfg.k) if cfg.name == "permutation" else cfg.p


def chance_loss(data: TaskData) -> float:
    """The cross-entropy of a model that knows nothing (uniform logits over the classes):
    the reference for the ``escaped`` diagnostic."""
    return math.log(data.num_classes)
