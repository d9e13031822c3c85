"""A tiny causal transformer with an output at every position, for the small end of the
capacity axis (down to a few hundred parameters).

* Token embedding ``E`` (vocab x d); with token outputs the unembedding is the same
  tensor (logits = ``RMSNorm(h) @ E^T``), so it is stored and counted once. With a scalar
  output (regression, e.g. the fraction-of-x task) the head is a ``d -> 1`` linear map
  with a bias instead.
* Learned position embedding (seq_len x d); pre-norm blocks ``x + Attn(RMSNorm(x))``,
  ``x + FFN(RMSNorm(x))`` with causal multi-head attention and a GELU FFN (``d_ff = 0``
  drops the FFN and its norm: an attention-only model); a final RMSNorm. No biases
  except the scalar head's.
* Every projection can be factorised at low rank: the position embedding
  (``pos_rank``), the fused QKV projection (``qkv_rank``), the attention output
  (``attn_out_rank``) and both FFN matrices (``ffn_rank``). Rank ``r > 0`` stores an
  ``out x in`` matrix as ``U (out x r) @ V (r x in)``, ``r * (in + out)`` parameters;
  rank 0 means full rank (``in * out``).

:func:`count_params` gives the parameter count from the config alone;
``TinyTransformer.num_params`` counts the built model (they agree; tests check it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

OUTPUTS = ("tokens", "scalar")


@dataclass
class TinyConfig:
    d_model: int = 16
    num_layers: int = 1
    num_heads: int = 2
    d_ff: int = 32  # FFN hidden width; 0: no FFN (attention only)
    pos_rank: int = 0  # ranks of the factorised projections; 0 = full rank
    qkv_rank: int = 0
    attn_out_rank: int = 0
    ffn_rank: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _linear_params(n_in: int, n_out: int, rank: int) -> int:
    return n_in * n_out if rank == 0 else rank * (n_in + n_out)


def count_params(cfg: TinyConfig, vocab_size: int, seq_len: int, output: str = "tokens") -> int:
    """Parameters of ``TinyTransformer(cfg, vocab_size, seq_len, output)``, from the config.

    ``vocab*d + pos + layers * (d + qkv + attn_out + [d + 2 ffn]) + d + [d + 1]``, where a
    projection ``in -> out`` costs ``in*out`` at rank 0 and ``r*(in+out)`` at rank r, the
    position embedding ``seq_len*d`` or ``r*(seq_len+d)``, the bracketed FFN terms only
    when ``d_ff > 0`` (its RMSNorm gain and two matrices) and the last term only for the
    scalar head (the tied unembedding adds nothing)."""
    d, f = cfg.d_model, cfg.d_ff
    pos = seq_len * d if cfg.pos_rank == 0 else cfg.pos_rank * (seq_len + d)
    block = d + _linear_params(d, 3 * d, cfg.qkv_rank) + _linear_params(d, d, cfg.attn_out_rank)
    if f > 0:
        block += d + _linear_params(d, f, cfg.ffn_rank) + _linear_params(f, d, cfg.ffn_rank)
    head = d + 1 if output == "scalar" else 0
    return vocab_size * d + pos + cfg.num_layers * block + d + head


def validate_tiny(cfg: TinyConfig, vocab_size: int, seq_len: int, output: str = "tokens") -> None:
    """Raise ValueError (one line) for a config that cannot build a model."""
    for name in ("d_model", "num_layers", "num_heads"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    if cfg.d_model % cfg.num_heads:
        raise ValueError(f"model.num_heads ({cfg.num_heads}) must divide model.d_model ({cfg.d_model})")
    if not isinstance(cfg.d_ff, int) or cfg.d_ff < 0:
        raise ValueError(f"model.d_ff must be a non-negative integer (0: no FFN), got {cfg.d_ff!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if vocab_size < 1 or seq_len < 1:
        raise ValueError(f"vocab_size and seq_len must be positive, got {vocab_size} and {seq_len}")
    d, f = cfg.d_model, cfg.d_ff
    limits = {"pos_rank": min(seq_len, d), "qkv_rank": d, "attn_out_rank": d, "ffn_rank": min(d, f) if f else 0}
    for name, limit in limits.items():
        rank = getattr(cfg, name)
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"model.{name} must be a non-negative integer (0 = full rank), got {rank!r}")
        if name == "ffn_rank" and f == 0:
            if rank:
                raise ValueError(f"model.ffn_rank is {rank} but model.d_ff is 0 (no FFN)")
            continue
        if rank > limit:
            raise ValueError(f"model.{name} = {rank} exceeds the full rank {limit} of that projection (0 = full rank)")


class LowRankLinear(nn.Module):
    """``x -> x W^T`` with ``W`` (out x in) full (rank 0) or ``up @ down`` of rank r; no bias.
    Initialised so that W's entries have variance 1/in in both forms."""

    def __init__(self, n_in: int, n_out: int, rank: int = 0):
        super().__init__()
        self.n_in, self.n_out, self.rank = n_in, n_out, rank
        if rank == 0:
            self.weight = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))
        else:
            self.down = nn.Parameter(torch.randn(rank, n_in) / math.sqrt(n_in))
            self.up = nn.Parameter(torch.randn(n_out, rank) / math.sqrt(rank))

    def full_weight(self) -> torch.Tensor:
        return self.weight if self.rank == 0 else self.up @ self.down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 0:
            return F.linear(x, self.weight)
        return F.linear(F.linear(x, self.down), self.up)


class PositionEmbedding(nn.Module):
    """(seq_len x d) table, full or ``left (seq_len x r) @ right (r x d)``; entries of
    variance 1/d either way."""

    def __init__(self, seq_len: int, d: int, rank: int = 0):
        super().__init__()
        self.rank = rank
        if rank == 0:
            self.weight = nn.Parameter(torch.randn(seq_len, d) / math.sqrt(d))
        else:
            self.left = nn.Parameter(torch.randn(seq_len, rank))
            self.right = nn.Parameter(torch.randn(rank, d) / math.sqrt(rank * d))

    def table(self) -> torch.Tensor:
        return self.weight if self.rank == 0 else self.left @ self.right

    def forward(self, t: int) -> torch.Tensor:
        if self.rank == 0:
            return self.weight[:t]
        return self.left[:t] @ self.right


class TinyAttention(nn.Module):
    def __init__(self, d: int, num_heads: int, qkv_rank: int, out_rank: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d // num_heads
        self.qkv = LowRankLinear(d, 3 * d, qkv_rank)
        self.out = LowRankLinear(d, d, out_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for z in self.qkv(x).split(d, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(out.transpose(1, 2).reshape(b, t, d))


class TinyBlock(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        d = cfg.d_model
        self.attn_norm = nn.RMSNorm(d)
        self.attn = TinyAttention(d, cfg.num_heads, cfg.qkv_rank, cfg.attn_out_rank)
        self.ffn = None
        if cfg.d_ff > 0:
            self.ffn_norm = nn.RMSNorm(d)
            self.ffn = nn.Sequential(
                LowRankLinear(d, cfg.d_ff, cfg.ffn_rank), nn.GELU(), LowRankLinear(cfg.d_ff, d, cfg.ffn_rank)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x


class TinyTransformer(nn.Module):
    """Token rows ``(B, T)`` to logits ``(B, T, vocab)`` (``output="tokens"``, tied
    embeddings) or to scalars ``(B, T)`` (``output="scalar"``), one per position, causal."""

    def __init__(self, cfg: TinyConfig, vocab_size: int, seq_len: int, output: str = "tokens"):
        super().__init__()
        validate_tiny(cfg, vocab_size, seq_len, output)
        self.cfg = cfg
        self.vocab_size, self.seq_len, self.output = vocab_size, seq_len, output
        d = cfg.d_model
        self.token_embeddings = nn.Embedding(vocab_size, d)
        nn.init.normal_(self.token_embeddings.weight, std=1 / math.sqrt(d))
        self.position_embeddings = PositionEmbedding(seq_len, d, cfg.pos_rank)
        self.blocks = nn.ModuleList(TinyBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, 1) if output == "scalar" else None

    @property
    def unembedding(self) -> torch.Tensor:
        """The output matrix of token outputs: the token embedding itself (tied)."""
        if self.output != "tokens":
            raise AttributeError("a scalar-output model has no unembedding")
        return self.token_embeddings.weight

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        t = inputs.shape[1]
        if t > self.seq_len:
            raise ValueError(f"input length {t} exceeds the model's seq_len {self.seq_len}")
        x = self.token_embeddings(inputs) + self.position_embeddings(t)
        for block in self.blocks:
            x = block(x)
        h = self.final_norm(x)
        if self.head is not None:
            return self.head(h).squeeze(-1)
        return F.linear(h, self.token_embeddings.weight)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_kwargs(self) -> dict:
        """What :func:`build_tiny` needs besides the config (stored in checkpoints)."""
        return {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "output": self.output}

    def describe(self) -> str:
        c = self.cfg
        ranks = ", ".join(f"{k}={getattr(c, k)}" for k in ("pos_rank", "qkv_rank", "attn_out_rank", "ffn_rank") if getattr(c, k))
        return (f"TinyTransformer {c.num_layers}x{c.d_model}, {c.num_heads} head(s), d_ff {c.d_ff}, "
                f"{'ranks ' + ranks if ranks else 'full rank'}, {self.output} output: {self.num_params:,} parameters")


def build_tiny(cfg: TinyConfig, vocab_size: int, seq_len: int, output: str = "tokens") -> TinyTransformer:
    return TinyTransformer(cfg, vocab_size, seq_len, output)
