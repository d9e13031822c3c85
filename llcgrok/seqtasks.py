"""Two sequence tasks with a target at every (or every answer) position.

**Fraction of x** (regression). A sequence of ``seq_len`` letters drawn uniformly from an
alphabet of ``alphabet_size`` (letter 0 is "x"); the target at position t is the fraction
of x among positions 0..t, current position included::

    letters  x b x c      (ids 0 1 0 2)
    targets  1 1/2 2/3 1/2

Mean squared error is the loss, mean absolute error the metric; the baseline a model must
beat predicts the per-position mean of the training targets (about 1/alphabet_size).

**Addition** (next-token prediction). Operands a, b < 10^n are written zero-padded to n
digits, most significant first, the sum least significant digit first in n+1 digits::

    a digits, '+', b digits, '=', s_0 s_1 ... s_n        (n = 3: 042+917=9590)

Tokens 0-9 are digits, 10 is '+', 11 is '='. With teacher forcing the model reads the
whole sequence but its last token; the loss is the next-token cross-entropy at the n+1
positions whose next token is an answer digit (:func:`answer_mask`), i.e. on the last
n+1 positions of the input. ``targets`` holds just the answer digits, ``(N, n+1)``.

Exact match (all n+1 answer digits right) is measured with teacher-forced argmax. For
exact match this is the same as greedy decoding: if every teacher-forced argmax is right,
greedy decoding reproduces the true prefix at each step and so the same digits; if one is
wrong, greedy decoding emits that same wrong digit at the first such position. (Per-digit
accuracy does differ between the two; it is reported teacher-forced.)

Splits. Training and held-out examples are distinct rows (sequences, or ordered pairs
(a, b)), and no held-out row occurs in training. Addition training pairs have a digit
count d drawn uniformly from 1..n per pair (``mixed_lengths``; operands uniform below
10^d, zero-padded to n digits); a draw that repeats an earlier pair is redrawn at full
length. Held-out pairs are uniform below 10^n (the task at full length). Each training
pair's length (digits of its larger operand) drives the optional curriculum.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config_sections import SEQ_TASKS  # noqa: F401  (re-exported: the names live with the params format)

LETTER_X = 0
PLUS, EQUALS = 10, 11
ADDITION_VOCAB = 12
MAX_DIGITS = 18  # a + b < 2 * 10^18 fits in int64


@dataclass
class SeqData:
    """Train and held-out tensors of one sequence task, plus what shapes the model."""

    task: str
    train_inputs: torch.Tensor  # (N, T) token ids
    train_targets: torch.Tensor  # fraction_of_x: (N, T) float; addition: (N, n+1) answer digits
    val_inputs: torch.Tensor
    val_targets: torch.Tensor
    vocab_size: int
    seq_len: int  # model input length
    output: str  # "scalar" or "tokens"
    train_lengths: torch.Tensor | None = None  # addition: digits of the larger operand per pair
    info: dict = field(default_factory=dict)

    def to(self, device) -> "SeqData":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SeqData(self.task, move(self.train_inputs), move(self.train_targets), move(self.val_inputs),
                       move(self.val_targets), self.vocab_size, self.seq_len, self.output,
                       move(self.train_lengths), dict(self.info))


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E9]))


# --------------------------------------------------------------------------- fraction of x


def fraction_of_x_targets(inputs: torch.Tensor) -> torch.Tensor:
    """Running fraction of letter 0 ("x") up to and including each position, (N, T) float."""
    inputs = torch.as_tensor(inputs)
    counts = (inputs == LETTER_X).to(torch.float32).cumsum(dim=-1)
    return counts / torch.arange(1, inputs.shape[-1] + 1, dtype=torch.float32)


def _distinct_rows(draw, total: int, space: int, enumerate_all, rng: np.random.Generator, what: str) -> np.ndarray:
    """``total`` distinct rows: enumerated and shuffled when the space is small, else drawn
    by ``draw(k)`` and deduplicated in order of appearance."""
    if total > space:
        raise ValueError(f"{what}: {total} distinct examples requested but only {space} exist; ask for fewer")
    if space <= 4 * total:
        rows = enumerate_all()
        return rows[rng.permutation(len(rows))[:total]]
    seen, out = set(), []
    while len(out) < total:
        for row in draw(int((total - len(out)) * 1.2) + 16):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                out.append(row)
                if len(out) == total:
                    break
    return np.stack(out)


def make_fraction_of_x(n_train: int, n_val: int, *, seq_len: int = 16, alphabet_size: int = 4, seed: int = 0) -> SeqData:
    """Distinct uniformly drawn sequences, split into train and held-out sets."""
    if not isinstance(alphabet_size, int) or alphabet_size < 2:
        raise ValueError(f"alphabet_size must be an integer >= 2 (letter 0 is x), got {alphabet_size!r}")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    _check_sizes(n_train, n_val)
    rng = _rng(seed)
    space = alphabet_size**seq_len

    def enumerate_all():
        return np.array(list(itertools.product(range(alphabet_size), repeat=seq_len)), dtype=np.int64)

    rows = _distinct_rows(lambda k: rng.integers(0, alphabet_size, size=(k, seq_len)), n_train + n_val, space,
                          enumerate_all, rng, f"fraction_of_x with alphabet {alphabet_size} and length {seq_len}")
    inputs = torch.from_numpy(rows).long()
    targets = fraction_of_x_targets(inputs)
    return SeqData(
        "fraction_of_x", inputs[:n_train], targets[:n_train], inputs[n_train:], targets[n_train:],
        vocab_size=alphabet_size, seq_len=seq_len, output="scalar",
        info={"alphabet_size": alphabet_size, "seq_len": seq_len},
    )


def mean_baseline(train_targets: torch.Tensor, targets: torch.Tensor) -> dict:
    """MSE and MAE on ``targets`` of predicting the per-position mean of ``train_targets``."""
    pred = train_targets.float().mean(dim=0, keepdim=True)
    err = targets.float() - pred
    return {"mse": float((err**2).mean()), "mae": float(err.abs().mean())}


def regression_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict:
    err = outputs.float() - targets.float()
    return {"loss": float((err**2).mean()), "mae": float(err.abs().mean())}


# --------------------------------------------------------------------------- addition


def addition_seq_len(n_digits: int) -> int:
    """Length of a full addition sequence: n + 1 + n + 1 + (n + 1)."""
    return 3 * n_digits + 3


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """(N, width) decimal digits, most significant first."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (values[:, None] // powers[None, :]) % 10


def encode_addition(a, b, n_digits: int) -> torch.Tensor:
    """Full sequences ``a + b = reversed(sum)`` as token ids, (N, 3n + 3)."""
    _check_digits(n_digits)
    a, b = np.atleast_1d(np.asarray(a, dtype=np.int64)), np.atleast_1d(np.asarray(b, dtype=np.int64))
    limit = 10**n_digits
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("encode_addition: a and b must be 1-D with the same length")
    if (a < 0).any() or (b < 0).any() or (a >= limit).any() or (b >= limit).any():
        raise ValueError(f"encode_addition: operands must lie in [0, 10^{n_digits})")
    n = len(a)
    answer = _digits(a + b, n_digits + 1)[:, ::-1]
    seq = np.concatenate([
        _digits(a, n_digits), np.full((n, 1), PLUS), _digits(b, n_digits), np.full((n, 1), EQUALS), answer,
    ], axis=1)
    return torch.from_numpy(np.ascontiguousarray(seq)).long()


def split_sequences(seqs: torch.Tensor, n_digits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing: model inputs (all tokens but the last) and answer targets (n+1)."""
    return seqs[:, :-1], seqs[:, -(n_digits + 1):]


def answer_mask(n_digits: int) -> torch.Tensor:
    """Boolean over the 3n+2 input positions: True where the next token is an answer digit
    (the '=' and the first n answer digits), i.e. where the loss is taken."""
    mask = torch.zeros(3 * n_digits + 2, dtype=torch.bool)
    mask[2 * n_digits + 1:] = True
    return mask


def decode_answer(digits) -> int:
    """The integer written by answer digits, least significant first."""
    return int("".join(str(int(d)) for d in reversed(list(digits))))


def operand_lengths(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Digits of the larger operand (0 counts as one digit)."""
    m = np.maximum(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    return np.maximum(1, np.floor(np.log10(np.maximum(m, 1))).astype(np.int64) + 1)


def make_addition(n_train: int, n_val: int, *, n_digits: int = 10, mixed_lengths: bool = True, seed: int = 0) -> SeqData:
    """Distinct training pairs and distinct held-out pairs, disjoint from training (see the
    module docstring for how they are drawn)."""
    _check_digits(n_digits)
    _check_sizes(n_train, n_val)
    rng = _rng(seed)
    limit = 10**n_digits
    space = limit * limit
    what = f"addition with {n_digits} digit(s)"
    if n_train + n_val > space:
        raise ValueError(f"{what}: {n_train + n_val} distinct pairs requested but only {space} exist; ask for fewer")
    if space <= 4 * (n_train + n_val):
        # Small space: every pair, shuffled; both sets uniform over all pairs.
        order = rng.permutation(space)[: n_train + n_val]
        pairs = np.stack([order // limit, order % limit], axis=1)
        train_ab, val_ab = pairs[:n_train], pairs[n_train:]
    else:
        seen: set = set()
        train_ab = np.empty((n_train, 2), dtype=np.int64)
        filled = 0
        while filled < n_train:
            k = n_train - filled
            d = rng.integers(1, n_digits + 1, size=k) if mixed_lengths else np.full(k, n_digits)
            for digits in d:
                bound = 10 ** int(digits)
                pair = (int(rng.integers(0, bound)), int(rng.integers(0, bound)))
                while pair in seen:  # a repeat: redraw at full length, where there is room
                    pair = (int(rng.integers(0, limit)), int(rng.integers(0, limit)))
                seen.add(pair)
                train_ab[filled] = pair
                filled += 1
        val_ab = np.empty((n_val, 2), dtype=np.int64)
        for i in range(n_val):
            pair = (int(rng.integers(0, limit)), int(rng.integers(0, limit)))
            while pair in seen:
                pair = (int(rng.integers(0, limit)), int(rng.integers(0, limit)))
            seen.add(pair)
            val_ab[i] = pair
    train_x, train_y = split_sequences(encode_addition(train_ab[:, 0], train_ab[:, 1], n_digits), n_digits)
    val_x, val_y = split_sequences(encode_addition(val_ab[:, 0], val_ab[:, 1], n_digits), n_digits)
    lengths = torch.from_numpy(operand_lengths(train_ab[:, 0], train_ab[:, 1]))
    return SeqData(
        "addition", train_x, train_y, val_x, val_y, vocab_size=ADDITION_VOCAB, seq_len=3 * n_digits + 2,
        output="tokens", train_lengths=lengths,
        info={"n_digits": n_digits, "mixed_lengths": bool(mixed_lengths), "train_pairs": train_ab, "val_pairs": val_ab},
    )


def answer_logits(logits: torch.Tensor, num_answer: int) -> torch.Tensor:
    """The logits at the positions that predict the answer digits (the last num_answer)."""
    return logits[:, -num_answer:]


def answer_cross_entropy(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer digits (``targets``: (N, n+1)). Every
    example has the same number of answer digits, so this is the mean of a per-example
    loss, as the LLC estimator needs. A module-level function: picklable for chain workers."""
    logits = answer_logits(model(inputs), targets.shape[1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.inference_mode()
def greedy_decode(model: torch.nn.Module, inputs: torch.Tensor, n_digits: int) -> torch.Tensor:
    """Answer digits generated greedily from the prompt ``a + b =`` (the first 2n+2 tokens
    of ``inputs``), one model call per digit: (N, n+1); argmax over the whole vocabulary,
    as in the teacher-forced metrics, so exact match agrees with :func:`addition_metrics`."""
    seq = inputs[:, : 2 * n_digits + 2]
    out = []
    for _ in range(n_digits + 1):
        nxt = model(seq)[:, -1].argmax(-1)
        out.append(nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return torch.stack(out, dim=1)


def addition_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Loss, exact match and per-digit accuracy (teacher-forced argmax) from full logits."""
    ans = answer_logits(logits, targets.shape[1])
    loss = F.cross_entropy(ans.reshape(-1, ans.shape[-1]), targets.reshape(-1))
    right = ans.argmax(-1) == targets
    return {"loss": float(loss), "exact_match": float(right.all(-1).float().mean()), "digit_acc": float(right.float().mean())}


# --------------------------------------------------------------------------- curriculum


def validate_curriculum(curriculum, n_digits: int) -> list[tuple[int, int]]:
    """``[[step, max_digits], ...]``: steps strictly increasing from 0, max digits in 1..n."""
    if curriculum is None:
        return []
    if not isinstance(curriculum, (list, tuple)) or not curriculum:
        raise ValueError(f"curriculum must be a non-empty list of [step, max_digits] pairs, got {curriculum!r}")
    out = []
    for entry in curriculum:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in entry):
            raise ValueError(f"curriculum entries must be [step, max_digits] integer pairs, got {entry!r}")
        step, digits = int(entry[0]), int(entry[1])
        if not 1 <= digits <= n_digits:
            raise ValueError(f"curriculum max_digits must lie in 1..{n_digits}, got {digits}")
        if out and step <= out[-1][0]:
            raise ValueError(f"curriculum steps must increase strictly, got {step} after {out[-1][0]}")
        out.append((step, digits))
    if out[0][0] != 0:
        raise ValueError(f"the curriculum must start at step 0, got {out[0][0]}")
    return out


def max_digits_at(curriculum, step: int, n_digits: int) -> int:
    """Largest operand length trained on at ``step`` (n_digits without a curriculum)."""
    current = n_digits
    for start, digits in curriculum or []:
        if step >= start:
            current = digits
    return current


# --------------------------------------------------------------------------- checks


def _check_sizes(n_train: int, n_val: int) -> None:
    for name, value in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_digits(n_digits: int) -> None:
    if not isinstance(n_digits, (int, np.integer)) or isinstance(n_digits, bool) or not 1 <= n_digits <= MAX_DIGITS:
        raise ValueError(f"n_digits must be an integer in 1..{MAX_DIGITS}, got {n_digits!r}")


def chance_loss(data: SeqData) -> float:
    """The loss of a model that knows nothing: log(vocab) for token outputs (addition:
    uniform logits), the predict-the-mean MSE for a scalar output (fraction of x). The
    reference for the ``escaped`` diagnostic."""
    if data.output == "tokens":
        return math.log(data.vocab_size)
    return mean_baseline(data.train_targets, data.train_targets)["mse"]
