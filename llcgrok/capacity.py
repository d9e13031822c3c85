"""The architecture grid: expansion, capacity buckets, deep-narrow vs wide-shallow pairs.

Bucket rule. Parameter counts of a grid span orders of magnitude, so buckets are cut on
``log10(num_params)``: the range between the grid's smallest and largest count is split
into three bins of equal width, named small, medium and large. The rule adapts to any
grid (the CPU quick preset as well as the reference study) and, on the reference grid,
puts 4x64 with 1x128 (213k vs 224k) and 4x128 with 1x256 (820k vs 842k) in one bucket.
Heads do not change the parameter count, so all head variants of a shape share a bucket.

Pair rule. Two architectures form a deep-narrow / wide-shallow pair when they are in the
same bucket, have the same number of heads, one has more layers *and* a smaller d_model
than the other, and their parameter counts differ by at most ``tolerance`` (default 15 %)
of the larger.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import pandas as pd

from .config_sections import ModelConfig, Params, RunConfig, get_dotted
from .model import count_params
from .tasks import NUM_SYMBOLS, num_classes_for

BUCKETS = ("small", "medium", "large")
PAIR_TOLERANCE = 0.15
ARCH_COLUMNS = ["num_layers", "d_model", "num_heads"]


def arch_name(num_layers: int, d_model: int, num_heads: int | None = None) -> str:
    """``4x64`` (layers x width), with ``h2`` appended when heads are given."""
    return f"{num_layers}x{d_model}" + (f"h{num_heads}" if num_heads is not None else "")


def expand_architectures(
    num_layers: Sequence[int],
    d_models: Sequence[int],
    num_heads: Sequence[int],
    *,
    vocab_size: int,
    num_classes: int,
    ffn_mult: int = 4,
) -> pd.DataFrame:
    """Every layers x d_model x heads combination whose heads divide d_model, with its
    parameter count and bucket."""
    rows = []
    for layers, width, heads in itertools.product(num_layers, d_models, num_heads):
        if width % heads:
            continue
        cfg = ModelConfig(num_layers=layers, d_model=width, num_heads=heads, ffn_mult=ffn_mult)
        rows.append(
            {
                "arch": arch_name(layers, width, heads),
                "num_layers": layers,
                "d_model": width,
                "num_heads": heads,
                "num_params": count_params(cfg, vocab_size, num_classes),
            }
        )
    table = pd.DataFrame(rows, columns=["arch", *ARCH_COLUMNS, "num_params"])
    table["bucket"] = assign_buckets(table["num_params"])
    return table


def assign_buckets(num_params: Sequence[int], names: Sequence[str] = BUCKETS) -> list[str]:
    """Equal-width bins on log10(num_params) between the smallest and largest count."""
    counts = [int(c) for c in num_params]
    if not counts:
        return []
    lo, hi = math.log10(min(counts)), math.log10(max(counts))
    if hi == lo:
        return [names[0]] * len(counts)
    width = (hi - lo) / len(names)
    out = []
    for c in counts:
        index = min(int((math.log10(c) - lo) / width), len(names) - 1)
        out.append(names[index])
    return out


def find_pairs(table: pd.DataFrame, tolerance: float = PAIR_TOLERANCE) -> pd.DataFrame:
    """Deep-narrow vs wide-shallow pairs within a bucket (see the module docstring)."""
    rows = []
    for (_, _), group in table.groupby(["bucket", "num_heads"], sort=False):
        for deep, wide in itertools.permutations(group.itertuples(index=False), 2):
            if not (deep.num_layers > wide.num_layers and deep.d_model < wide.d_model):
                continue
            gap = abs(deep.num_params - wide.num_params) / max(deep.num_params, wide.num_params)
            if gap <= tolerance:
                rows.append(
                    {
                        "bucket": deep.bucket,
                        "num_heads": deep.num_heads,
                        "deep_narrow": deep.arch,
                        "wide_shallow": wide.arch,
                        "deep_params": deep.num_params,
                        "wide_params": wide.num_params,
                        "relative_gap": round(gap, 4),
                    }
                )
    return pd.DataFrame(
        rows, columns=["bucket", "num_heads", "deep_narrow", "wide_shallow", "deep_params", "wide_params", "relative_gap"]
    )


def _axis(params: Params, dotted: str) -> list:
    return list(params.grid.axes.get(dotted, [get_dotted(params.base, dotted)]))


def grid_table(params: Params) -> pd.DataFrame:
    """The architecture table of a params file. Parameter counts use the first task of
    the study (the other tasks differ only in embedding and head sizes)."""
    task = RunConfig().task
    task.name = _axis(params, "task.name")[0]
    task.p, task.k = params.base.task.p, params.base.task.k
    num_classes = num_classes_for(task)
    return expand_architectures(
        _axis(params, "model.num_layers"),
        _axis(params, "model.d_model"),
        _axis(params, "model.num_heads"),
        vocab_size=num_classes + NUM_SYMBOLS,
        num_classes=num_classes,
        ffn_mult=params.base.model.ffn_mult,
    )


def bucket_lookup(table: pd.DataFrame) -> dict[tuple[int, int, int], str]:
    """``{(num_layers, d_model, num_heads): bucket}`` for joining onto run tables."""
    return {(r.num_layers, r.d_model, r.num_heads): r.bucket for r in table.itertuples(index=False)}
