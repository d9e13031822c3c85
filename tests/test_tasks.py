import math

import pytest
import torch

from llcgrok.config import ConfigError, TaskConfig
from llcgrok.tasks import EQ_TOKEN, NUM_SYMBOLS, OP_TOKEN, make_task, permutations_of


@pytest.mark.parametrize(
    "name, pairs, classes",
    [("x_plus_y", 9409, 97), ("x_minus_y", 9409, 97), ("x_div_y", 9312, 97), ("permutation", 14400, 120)],
)
def test_reference_sizes(name, pairs, classes):
    data = make_task(TaskConfig(name=name))
    assert data.num_pairs == pairs
    assert data.num_classes == classes
    assert data.vocab_size == classes + 2
    assert len(data.train_targets) == pairs // 2  # training_fraction 0.5, floor
    assert data.train_inputs.shape == (pairs // 2, 4)


def _decode(data, split="train"):
    inputs = getattr(data, f"{split}_inputs")
    targets = getattr(data, f"{split}_targets")
    a, b = inputs[:, 0] - NUM_SYMBOLS, inputs[:, 2] - NUM_SYMBOLS
    return inputs, a, b, targets


@pytest.mark.parametrize("split", ["train", "val"])
def test_modular_labels(split):
    p = 97
    ops = [
        ("x_plus_y", lambda a, b: (a + b) % p),
        ("x_minus_y", lambda a, b: (a - b) % p),
        ("x_times_y", lambda a, b: (a * b) % p),
        ("x2_plus_y2", lambda a, b: (a**2 + b**2) % p),
        ("x3_plus_xy", lambda a, b: (a**3 + a * b) % p),
    ]
    for name, op in ops:
        inputs, a, b, c = _decode(make_task(TaskConfig(name=name, p=p), seed=3), split)
        assert torch.all(inputs[:, 1] == OP_TOKEN) and torch.all(inputs[:, 3] == EQ_TOKEN)
        assert torch.equal(c, op(a, b))
    inputs, a, b, c = _decode(make_task(TaskConfig(name="x_div_y", p=p)), split)
    assert torch.all(b >= 1)
    assert torch.equal((c * b) % p, a)  # c = a / b  <=>  c * b = a (mod p)


def test_permutation_labels_compose():
    data = make_task(TaskConfig(name="permutation", k=4))
    perms = permutations_of(4)
    inputs, a, b, c = _decode(data)
    for ia, ib, ic in zip(a.tolist()[:200], b.tolist()[:200], c.tolist()[:200]):
        pa, pb, pc = perms[ia], perms[ib], perms[ic]
        assert all(pc[i] == pa[pb[i]] for i in range(4))
    assert data.num_classes == math.factorial(4)


def test_split_is_a_partition_and_seeded():
    cfg = TaskConfig(name="x_plus_y", p=23, training_fraction=0.3)
    one, two, other = make_task(cfg, seed=1), make_task(cfg, seed=1), make_task(cfg, seed=2)
    assert torch.equal(one.train_inputs, two.train_inputs)
    assert not torch.equal(one.train_inputs, other.train_inputs)
    rows = {tuple(r) for r in torch.cat([one.train_inputs, one.val_inputs]).tolist()}
    assert len(rows) == 23 * 23
    fixed = TaskConfig(name="x_plus_y", p=23, split_seed=5)
    assert torch.equal(make_task(fixed, seed=1).train_inputs, make_task(fixed, seed=2).train_inputs)


def test_division_needs_a_prime():
    with pytest.raises(ConfigError, match="prime"):
        make_task(TaskConfig(name="x_div_y", p=96))
