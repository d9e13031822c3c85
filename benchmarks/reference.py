"""The plain way: the AI-Scientist grokking template's model and loop, in plain PyTorch.

This is the baseline the benchmarks compare llcgrok against. It follows the template as
written: sequence-first ``nn.MultiheadAttention`` (default ``need_weights=True``), an
additive causal mask built every forward, the final LayerNorm and head applied at every
position and the last one read, ``torch.optim.AdamW`` with its default implementation and
a ``LambdaLR`` warm-up, train metrics accumulated as tensors, validation in 8 batches of
512 under ``no_grad``.

One deliberate departure, in the baseline's favour: batches are index tensors drawn with
``torch.randint`` from the same generators llcgrok uses, not the template's per-example
Python ``IterableDataset``. So both sides see the same examples in the same order, and the
comparison measures the model, optimizer and evaluation, not the data loader.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class DecoderBlock(nn.Module):
    def __init__(self, dim_model: int, n_heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim_model, n_heads)
        self.self_attn_norm = nn.LayerNorm(dim_model)
        self.ffn = nn.Sequential(nn.Linear(dim_model, dim_model * 4), nn.GELU(), nn.Linear(dim_model * 4, dim_model))
        self.ffn_norm = nn.LayerNorm(dim_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn_mask = torch.full((len(x), len(x)), -float("Inf"), device=x.device, dtype=x.dtype)
        attn_mask = torch.triu(attn_mask, diagonal=1)
        a1, _ = self.self_attn(x, x, x, attn_mask=attn_mask)
        a1 = self.self_attn_norm(x + a1)
        a2 = self.ffn(a1)
        return self.ffn_norm(a1 + a2)


class ReferenceTransformer(nn.Module):
    """Token rows ``(B, T)`` -> logits ``(T, B, C)`` at every position (template layout)."""

    def __init__(self, num_layers: int, dim_model: int, num_heads: int, vocab_size: int, output_size: int, seq_len: int = 4):
        super().__init__()
        self.token_embeddings = nn.Embedding(vocab_size, dim_model)
        self.position_embeddings = nn.Embedding(seq_len, dim_model)
        self.model = nn.Sequential(
            *[DecoderBlock(dim_model, num_heads) for _ in range(num_layers)],
            nn.LayerNorm(dim_model),
            nn.Linear(dim_model, output_size),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch_size, context_len = inputs.shape
        token_embedding = self.token_embeddings(inputs)
        positions = torch.arange(context_len, device=inputs.device).unsqueeze(0).expand(batch_size, context_len)
        embedding = token_embedding + self.position_embeddings(positions)
        return self.model(embedding.transpose(0, 1))


class LastPosition(nn.Module):
    """The reference model as a ``(B, T) -> (B, C)`` map (what devinterp's evaluate_ce needs)."""

    def __init__(self, model: ReferenceTransformer):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)[-1]


def build_reference(model_cfg, vocab_size: int, num_classes: int, seq_len: int = 4) -> ReferenceTransformer:
    return ReferenceTransformer(model_cfg.num_layers, model_cfg.d_model, model_cfg.num_heads, vocab_size, num_classes, seq_len)


def _name_map(num_layers: int) -> dict[str, str]:
    """llcgrok parameter name -> reference parameter name."""
    out = {
        "token_embeddings.weight": "token_embeddings.weight",
        "position_embeddings.weight": "position_embeddings.weight",
        "final_norm.weight": f"model.{num_layers}.weight",
        "final_norm.bias": f"model.{num_layers}.bias",
        "head.weight": f"model.{num_layers + 1}.weight",
        "head.bias": f"model.{num_layers + 1}.bias",
    }
    for i in range(num_layers):
        for ours, theirs in [
            ("attn.in_proj.weight", "self_attn.in_proj_weight"),
            ("attn.in_proj.bias", "self_attn.in_proj_bias"),
            ("attn.out_proj.weight", "self_attn.out_proj.weight"),
            ("attn.out_proj.bias", "self_attn.out_proj.bias"),
            ("attn_norm.weight", "self_attn_norm.weight"),
            ("attn_norm.bias", "self_attn_norm.bias"),
            ("ffn.0.weight", "ffn.0.weight"),
            ("ffn.0.bias", "ffn.0.bias"),
            ("ffn.2.weight", "ffn.2.weight"),
            ("ffn.2.bias", "ffn.2.bias"),
            ("ffn_norm.weight", "ffn_norm.weight"),
            ("ffn_norm.bias", "ffn_norm.bias"),
        ]:
            out[f"blocks.{i}.{ours}"] = f"model.{i}.{theirs}"
    return out


@torch.no_grad()
def copy_llcgrok_to_reference(src: nn.Module, dst: ReferenceTransformer) -> None:
    names = _name_map(src.cfg.num_layers)
    theirs = dict(dst.named_parameters())
    ours = dict(src.named_parameters())
    assert set(names) == set(ours) and set(names.values()) == set(theirs)
    for a, b in names.items():
        theirs[b].copy_(ours[a])


@torch.no_grad()
def copy_reference_to_llcgrok(src: ReferenceTransformer, dst: nn.Module) -> None:
    names = _name_map(dst.cfg.num_layers)
    theirs = dict(src.named_parameters())
    ours = dict(dst.named_parameters())
    for a, b in names.items():
        ours[a].copy_(theirs[b])


class ReferenceLoop:
    """The template's training loop, resumable in chunks of updates (for interleaved timing).

    ``next_batch(step)`` and ``next_val()`` supply index tensors, so that a caller can feed
    it the exact batches another trainer sees.
    """

    def __init__(self, model: ReferenceTransformer, data, train_cfg, next_batch, next_val):
        self.model, self.data, self.tc = model, data, train_cfg
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2), weight_decay=train_cfg.weight_decay
        )
        warmup = train_cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(s / warmup, 1) if warmup else 1.0)
        self.criterion = nn.CrossEntropyLoss()
        self.next_batch, self.next_val = next_batch, next_val
        self.step = 0
        self.rows: list[dict] = []
        self._reset_acc()

    def _reset_acc(self):
        self.loss_total, self.correct, self.total = 0.0, 0.0, 0

    def run(self, num_updates: int) -> None:
        model, tc = self.model, self.tc
        for _ in range(num_updates):
            model.train()
            idx = self.next_batch(self.step)
            inputs, labels = self.data.train_inputs[idx], self.data.train_targets[idx]
            self.optimizer.zero_grad()
            output = model(inputs)[-1, :, :]
            loss = self.criterion(output, labels)
            self.correct += (torch.argmax(output, dim=1) == labels).sum()
            self.loss_total += loss.detach() * len(labels)
            self.total += len(labels)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            if self.step % tc.eval_every == 0:
                self.rows.append({"step": self.step, "train_loss": float(self.loss_total / self.total),
                                  "train_acc": float(self.correct / self.total), **self.evaluate()})
                self._reset_acc()

    @torch.no_grad()
    def evaluate(self) -> dict:
        model, tc = self.model, self.tc
        model.eval()
        vidx = self.next_val()
        correct, loss, total = 0.0, 0.0, 0
        for chunk in vidx.split(tc.batch_size):
            inputs, labels = self.data.val_inputs[chunk], self.data.val_targets[chunk]
            output = model(inputs)[-1, :, :]
            correct += (torch.argmax(output, dim=1) == labels).sum()
            loss += self.criterion(output, labels) * len(labels)
            total += labels.shape[0]
        model.train()
        return {"val_loss": float(loss / total), "val_acc": float(correct / total)}
