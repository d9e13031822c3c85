"""The reference grokking transformer, computed lean.

Learned token and position embeddings; blocks ``LN(x + MHA(x))``, ``LN(x + FFN(x))``
(post-norm, the reference) or ``x + MHA(LN(x))``, ``x + FFN(LN(x))`` (pre-norm); causal
attention; a 4x GELU FFN with biases; a final LayerNorm; a linear head read at the last
position.

Only the last position's logits are ever read, so the last block computes its query,
attention output, FFN and norms for that position alone (keys and values still cover the
whole sequence). The function is the same as the full computation; it costs less.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config_sections import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        # One fused projection with the layout and initialisation of nn.MultiheadAttention,
        # so that reference weights load one to one.
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, hd)
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        b, t, d = x.shape
        if not last_only:
            q, k, v = self.in_proj(x).split(d, dim=-1)
            out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), is_causal=True)
            return self.out_proj(out.transpose(1, 2).reshape(b, t, d))
        w, bias = self.in_proj.weight, self.in_proj.bias
        # The last row as a 2-D matrix, not the (B, 1, d) slice x[:, -1:]: under vmap over
        # stacked weights (llcgrok.sgld_batched, ensemble.py) a linear layer on that strided
        # slice becomes B separate outer products (measured 17 ms against 0.9 ms for the
        # forward and backward at 4 x 256 rows, d 64). Without vmap both are the same
        # matrix product, bit for bit.
        q = F.linear(x[:, -1], w[:d], bias[:d]).unsqueeze(1)
        kv = F.linear(x, w[d:], bias[d:])
        k, v = kv.split(d, dim=-1)
        # The last query sees every key, so no mask is needed.
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        return self.out_proj(out.transpose(1, 2).reshape(b, 1, d))


class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, ffn_mult: int, norm: str):
        super().__init__()
        self.pre_norm = norm == "pre"
        self.attn = CausalSelfAttention(d_model, num_heads)
        self.attn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model)
        )
        self.ffn_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        residual = x[:, -1:] if last_only else x
        if self.pre_norm:
            h = residual + self.attn(self.attn_norm(x), last_only)
            return h + self.ffn(self.ffn_norm(h))
        h = self.attn_norm(residual + self.attn(x, last_only))
        return self.ffn_norm(h + self.ffn(h))


class GrokTransformer(nn.Module):
    """Maps token rows ``(B, T)`` to logits ``(B, num_classes)`` read at the last position."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, num_classes: int, seq_len: int = 4):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.num_classes, self.seq_len = vocab_size, num_classes, seq_len
        d = cfg.d_model
        self.token_embeddings = nn.Embedding(vocab_size, d)
        self.position_embeddings = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.ffn_mult, cfg.norm) for _ in range(cfg.num_layers)
        )
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        t = inputs.shape[1]
        x = self.token_embeddings(inputs) + self.position_embeddings.weight[:t]
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=(i == last))
        return self.head(self.final_norm(x[:, -1]))

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_kwargs(self) -> dict:
        """What :func:`build_model` needs to rebuild this model (stored in checkpoints)."""
        return {"vocab_size": self.vocab_size, "num_classes": self.num_classes, "seq_len": self.seq_len}


def build_model(cfg: ModelConfig, vocab_size: int, num_classes: int, seq_len: int = 4) -> GrokTransformer:
    return GrokTransformer(cfg, vocab_size, num_classes, seq_len)


def count_params(cfg: ModelConfig, vocab_size: int, num_classes: int, seq_len: int = 4) -> int:
    """Parameter count from the config alone, without building the model."""
    d, f = cfg.d_model, cfg.ffn_mult * cfg.d_model
    per_block = (3 * d * d + 3 * d) + (d * d + d) + 2 * (2 * d) + (d * f + f) + (f * d + d)
    return vocab_size * d + seq_len * d + cfg.num_layers * per_block + 2 * d + d * num_classes + num_classes


def flops_per_example(cfg: ModelConfig, num_classes: int, seq_len: int = 4) -> int:
    """Matrix-multiply FLOPs (2 per multiply-add) of one lean forward pass."""
    d, f, t = cfg.d_model, cfg.ffn_mult * cfg.d_model, seq_len
    full_block = t * (3 * d * d + d * d + 2 * d * f) + 2 * t * t * d
    last_block = t * 2 * d * d + (d * d + d * d + 2 * d * f) + 2 * t * d
    blocks = (cfg.num_layers - 1) * full_block + last_block
    return 2 * (blocks + d * num_classes)
