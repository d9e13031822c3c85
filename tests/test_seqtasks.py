"""Sequence tasks: fraction-of-x targets, addition encoding, masks, splits, curriculum."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llcgrok.seqtasks import (
    EQUALS,
    PLUS,
    addition_metrics,
    answer_cross_entropy,
    answer_mask,
    chance_loss,
    decode_answer,
    encode_addition,
    fraction_of_x_targets,
    greedy_decode,
    make_addition,
    make_fraction_of_x,
    max_digits_at,
    mean_baseline,
    operand_lengths,
    split_sequences,
    validate_curriculum,
)


def test_fraction_of_x_by_hand():
    # x b x c / b b b b / x x x x  (x is letter 0)
    inputs = torch.tensor([[0, 1, 0, 2], [1, 1, 1, 1], [0, 0, 0, 0], [3, 0, 3, 0]])
    expected = torch.tensor([
        [1, 1 / 2, 2 / 3, 2 / 4],
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [0, 1 / 2, 1 / 3, 2 / 4],
    ])
    assert torch.allclose(fraction_of_x_targets(inputs), expected)


def test_fraction_of_x_split_is_distinct_and_disjoint():
    data = make_fraction_of_x(300, 100, seq_len=6, alphabet_size=3, seed=1)
    assert data.train_inputs.shape == (300, 6) and data.val_inputs.shape == (100, 6)
    assert data.output == "scalar" and data.vocab_size == 3 and data.seq_len == 6
    rows = {tuple(r) for r in data.train_inputs.tolist()}
    assert len(rows) == 300
    assert not rows & {tuple(r) for r in data.val_inputs.tolist()}
    assert torch.equal(data.train_targets, fraction_of_x_targets(data.train_inputs))
    assert int(data.train_inputs.min()) == 0 and int(data.train_inputs.max()) == 2
    # the same seed gives the same data; a small space is enumerated (3^4 = 81 sequences)
    assert torch.equal(make_fraction_of_x(300, 100, seq_len=6, alphabet_size=3, seed=1).val_inputs, data.val_inputs)
    small = make_fraction_of_x(60, 21, seq_len=4, alphabet_size=3)
    assert len({tuple(r) for r in torch.cat([small.train_inputs, small.val_inputs]).tolist()}) == 81


def test_fraction_of_x_bad_input():
    with pytest.raises(ValueError, match="only 81 exist"):
        make_fraction_of_x(80, 2, seq_len=4, alphabet_size=3)
    with pytest.raises(ValueError, match="alphabet_size"):
        make_fraction_of_x(10, 2, alphabet_size=1)


def test_mean_baseline():
    train = torch.tensor([[1.0, 0.5], [0.0, 0.5]])
    base = mean_baseline(train, torch.tensor([[1.0, 1.0]]))
    assert base["mae"] == pytest.approx((0.5 + 0.5) / 2)
    assert base["mse"] == pytest.approx(0.25)


def test_addition_encoding_by_hand():
    # 42 + 917 = 959 -> "042+917=" then 0959 reversed: 9 5 9 0
    seq = encode_addition([42], [917], 3)
    assert seq.tolist() == [[0, 4, 2, PLUS, 9, 1, 7, EQUALS, 9, 5, 9, 0]]
    # 999 + 999 = 1998: the carry reaches the (n+1)-th digit
    assert encode_addition([999], [999], 3)[0, -4:].tolist() == [8, 9, 9, 1]
    # zero padding
    assert encode_addition([7], [0], 4)[0, :9].tolist() == [0, 0, 0, 7, PLUS, 0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"\[0, 10\^3\)"):
        encode_addition([1000], [1], 3)


def test_reversed_sums_and_answer_mask():
    rng = np.random.default_rng(0)
    n = 10
    a, b = rng.integers(0, 10**n, 50), rng.integers(0, 10**n, 50)
    seqs = encode_addition(a, b, n)
    assert seqs.shape == (50, 3 * n + 3)
    inputs, targets = split_sequences(seqs, n)
    assert inputs.shape == (50, 3 * n + 2) and targets.shape == (50, n + 1)
    assert [decode_answer(t) for t in targets.tolist()] == [int(x + y) for x, y in zip(a, b)]
    mask = answer_mask(n)
    assert mask.shape == (3 * n + 2,) and int(mask.sum()) == n + 1
    positions = torch.nonzero(mask).squeeze(1)
    assert positions[0] == 2 * n + 1 and bool((inputs[:, positions[0]] == EQUALS).all())
    # the next token at every masked position is an answer digit, in order
    assert torch.equal(seqs[:, positions + 1], targets)
    assert not mask[: 2 * n + 1].any()


def test_answer_loss_is_masked_cross_entropy():
    torch.manual_seed(0)
    n = 3
    inputs, targets = split_sequences(encode_addition([12, 345], [678, 9], n), n)

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.randn(2, 3 * n + 2, 12)

        def forward(self, x):
            return self.logits

    model = Fixed()
    full_targets = torch.cat([inputs[:, 1:], targets[:, -1:]], dim=1)  # next token everywhere
    mask = answer_mask(n)
    expected = F.cross_entropy(model.logits[:, mask].reshape(-1, 12), full_targets[:, mask].reshape(-1))
    assert answer_cross_entropy(model, inputs, targets).item() == pytest.approx(expected.item())


class _Oracle(torch.nn.Module):
    """Predicts the next token of a + b = reversed(sum) from the prefix, wrong on the
    second answer digit whenever a is even: its errors depend on the prefix."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x):
        n, (batch, t) = self.n, x.shape
        digits = lambda part: sum(part[:, i] * 10 ** (n - 1 - i) for i in range(n))  # noqa: E731
        a, b = digits(x[:, :n]), digits(x[:, n + 1: 2 * n + 1])
        answer = torch.stack([((a + b) // 10**k) % 10 for k in range(n + 1)], dim=1)
        logits = torch.zeros(batch, t, 12)
        for pos in range(2 * n + 1, t):
            k = pos - (2 * n + 1)
            token = answer[:, k].clone()
            if k == 1:
                token = torch.where(a % 2 == 0, (token + 1) % 10, token)
            logits[torch.arange(batch), pos, token] = 1.0
        return logits


def test_teacher_forced_exact_match_equals_greedy_decoding():
    n = 3
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 1000, 40), rng.integers(0, 1000, 40)
    inputs, targets = split_sequences(encode_addition(a, b, n), n)
    model = _Oracle(n)
    metrics = addition_metrics(model(inputs), targets)
    greedy = greedy_decode(model, inputs, n)
    assert metrics["exact_match"] == pytest.approx(float((greedy == targets).all(-1).float().mean()))
    assert metrics["exact_match"] == pytest.approx(float(np.mean(a % 2 == 1)))
    assert metrics["digit_acc"] == pytest.approx(1 - np.mean(a % 2 == 0) / (n + 1))


def test_addition_split_is_distinct_and_disjoint():
    data = make_addition(3000, 500, n_digits=4, seed=3)
    train = {tuple(p) for p in data.info["train_pairs"].tolist()}
    val = {tuple(p) for p in data.info["val_pairs"].tolist()}
    assert len(train) == 3000 and len(val) == 500 and not train & val
    assert data.train_inputs.shape == (3000, 14) and data.train_targets.shape == (3000, 5)
    assert data.seq_len == 14 and data.vocab_size == 12 and data.output == "tokens"
    # mixed lengths: every operand length occurs; lengths are the larger operand's digits
    assert set(data.train_lengths.tolist()) == {1, 2, 3, 4}
    pairs = data.info["train_pairs"]
    assert torch.equal(data.train_lengths, torch.from_numpy(operand_lengths(pairs[:, 0], pairs[:, 1])))
    assert operand_lengths(np.array([0, 9, 10, 999]), np.array([0, 0, 5, 1000])).tolist() == [1, 1, 2, 4]
    # sequences decode to the pairs' sums
    assert [decode_answer(t) for t in data.val_targets[:20].tolist()] == [int(x + y) for x, y in data.info["val_pairs"][:20]]
    # a small space is enumerated: 1-digit addition has 100 pairs
    small = make_addition(60, 40, n_digits=1)
    both = {tuple(p) for p in small.info["train_pairs"].tolist()} | {tuple(p) for p in small.info["val_pairs"].tolist()}
    assert len(both) == 100
    with pytest.raises(ValueError, match="only 100 exist"):
        make_addition(90, 20, n_digits=1)
    with pytest.raises(ValueError, match="n_digits"):
        make_addition(10, 10, n_digits=0)


def test_curriculum():
    schedule = validate_curriculum([[0, 2], [100, 5], [300, 10]], 10)
    assert [max_digits_at(schedule, s, 10) for s in (0, 99, 100, 299, 300, 10_000)] == [2, 2, 5, 5, 10, 10]
    assert max_digits_at([], 5, 7) == 7
    with pytest.raises(ValueError, match="start at step 0"):
        validate_curriculum([[10, 2]], 10)
    with pytest.raises(ValueError, match="increase"):
        validate_curriculum([[0, 2], [0, 3]], 10)
    with pytest.raises(ValueError, match="1..10"):
        validate_curriculum([[0, 11]], 10)


def test_chance_loss():
    assert chance_loss(make_addition(50, 10, n_digits=3)) == pytest.approx(np.log(12))
    data = make_fraction_of_x(500, 10, seq_len=8)
    assert chance_loss(data) == pytest.approx(mean_baseline(data.train_targets, data.train_targets)["mse"])
