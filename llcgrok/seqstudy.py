"""The study of a sequence-task params file (``task.name`` addition or fraction_of_x):
its configs with their run ids, the parameters of their notebook, and ``summary.csv``.

Every config runs through its task's notebook (``addition.ipynb``, ``fraction_of_x.ipynb``)
with the sections of :func:`llcgrok.seqparams.sections_of`, by the machinery of
:mod:`llcgrok.sweep`. ``summary.csv`` has one row per config::

    run_id, task, num_layers, d_model, num_heads, d_ff, num_params, seed,
    the task's outcome columns (OUTCOME_COLUMNS), llc_final, llc_peak, llc_peak_step,
    llc_regime, llc_nbeta, llc_localization, status

``llc_regime`` is "llc" only when every checkpoint of the trajectory is in the LLC regime,
else "curvature": an LLC column is never read without it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from . import runs
from .config_sections import SEQ_TASKS, ConfigError
from .seqconfig import SeqConfig
from .seqparams import SeqParams, expand_seq, flat_key, llc_with_overrides, sections_of
from .study import Study, StudyConfig, config_status

OUTCOME_COLUMNS = {
    "addition": ["final_val_exact_match", "best_val_exact_match", "steps_to_exact_match_0.99", "final_val_digit_acc"],
    "fraction_of_x": ["final_val_mae", "baseline_val_mae"],
}
ARCH_COLUMNS = ["run_id", "task", "num_layers", "d_model", "num_heads", "d_ff", "num_params", "seed"]
LLC_COLUMNS = ["llc_final", "llc_peak", "llc_peak_step", "llc_regime", "llc_nbeta", "llc_localization"]
LLC_REGIME = "llc"

# Keys that SeqConfig.run_id already spells out, per task: any other grid axis is appended
# to the id (as run_id_for does for the modular tasks), so that its configs stay apart.
_ID_KEYS = {"task.name", "train.seed", "model.num_layers", "model.d_model", "model.num_heads", "model.d_ff",
            "model.pos_rank", "model.qkv_rank", "model.attn_out_rank", "model.ffn_rank"}
_TASK_ID_KEYS = {"addition": {"task.n_digits"}, "fraction_of_x": {"task.seq_len", "task.alphabet_size"}}


def summary_columns(tasks) -> list[str]:
    """The columns of a sequence study's summary.csv: the outcome columns of each task present."""
    present = set(tasks)
    outcomes = [c for task in SEQ_TASKS if task in present for c in OUTCOME_COLUMNS[task]]
    return ARCH_COLUMNS + list(dict.fromkeys(outcomes)) + LLC_COLUMNS + ["status"]


def _flat_value(cfg: SeqConfig, dotted: str, source: str) -> Any:
    value: Any = cfg.to_dict()
    for part in flat_key(dotted, source).split("."):
        value = value[part]
    return value


def seq_run_id(cfg: SeqConfig, axes, source: str = "<params>") -> str:
    """``cfg.run_id`` with every axis it does not spell out inserted before the seed:
    ``add3-L1-d8-h2-f16-s0`` on a ``train.lr`` axis is ``add3-L1-d8-h2-f16-lr0.001-s0``."""
    suffix = f"-s{cfg.seed}"
    head = cfg.run_id[: -len(suffix)]
    known = _ID_KEYS | _TASK_ID_KEYS.get(cfg.task, set())
    for dotted in axes:
        if dotted not in known:
            head += f"-{dotted.rsplit('.', 1)[-1]}{_flat_value(cfg, dotted, source)}"
    return head + suffix


def seq_study_configs(params: SeqParams, overrides: Mapping[str, Any] | None = None) -> list[StudyConfig]:
    """Every config of the study, ``overrides`` (section-dotted keys, ``llc.*`` included)
    applied to each; parameters are the sections its notebook takes."""
    overrides = dict(overrides or {})
    llc_pairs = {k: v for k, v in overrides.items() if k.startswith("llc.")}
    llc = llc_with_overrides(params.llc, llc_pairs, "--set")
    rest = {k: v for k, v in overrides.items() if k not in llc_pairs}
    out, seen = [], set()
    for cfg in expand_seq(params, rest):
        run_id = seq_run_id(cfg, params.axes, params.source)
        if run_id in seen:
            raise ConfigError(f"{params.source}: two configs share the run id {run_id}")
        seen.add(run_id)
        out.append(StudyConfig(run_id, cfg, sections_of(cfg, llc)))
    return out


def sequence_study(params: SeqParams, overrides: Mapping[str, Any] | None = None) -> Study:
    configs = seq_study_configs(params, overrides)
    return Study(source=params.source, configs=configs, write_summary=functools.partial(write_seq_summary, configs=configs))


def trajectory_regime(table: pd.DataFrame) -> str | None:
    """The regime of a whole trajectory: "llc" when every row is in the LLC regime, else
    "curvature" (a row without a regime counts as curvature: nothing vouches for it); None
    without rows."""
    if table.empty:
        return None
    regimes = table["regime"] if "regime" in table else pd.Series("", index=table.index)
    return LLC_REGIME if (regimes.fillna("").astype(str).str.strip().str.lower() == LLC_REGIME).all() else "curvature"


def llc_columns(run_dir: Path) -> dict:
    """The LLC columns of one run's summary row, from its ``llc.csv``."""
    figures: dict = dict.fromkeys(LLC_COLUMNS)
    path = run_dir / "llc.csv"
    if not path.exists():
        return figures
    table = pd.read_csv(path).sort_values("step")
    figures["llc_regime"] = trajectory_regime(table)
    valid = table.dropna(subset=["llc_mean"])
    if valid.empty:
        return figures
    peak = valid.loc[valid["llc_mean"].idxmax()]
    first = table.iloc[0]
    figures.update({
        "llc_final": float(valid["llc_mean"].iloc[-1]), "llc_peak": float(peak["llc_mean"]),
        "llc_peak_step": int(peak["step"]), "llc_nbeta": float(first["nbeta"]), "llc_localization": float(first["localization"]),
    })
    return figures


def seq_summary_row(item: StudyConfig, run_dir: Path, status: str) -> dict:
    cfg: SeqConfig = item.config
    m = cfg.model
    row = {"run_id": item.run_id, "task": cfg.task, "num_layers": m.num_layers, "d_model": m.d_model,
           "num_heads": m.num_heads, "d_ff": m.d_ff, "seed": cfg.seed, "status": status}
    summary = runs.read_summary(run_dir) or {}
    for key in ["num_params", *OUTCOME_COLUMNS[cfg.task]]:
        row[key] = summary.get(key)
    row.update(llc_columns(run_dir))
    return row


def write_seq_summary(out: Path, configs: list[StudyConfig]) -> pd.DataFrame:
    """``summary.csv`` of a sequence study: one row per config, finished or not (``status``)."""
    rows = []
    for item in configs:
        status, where = config_status(out, item.run_id)
        rows.append(seq_summary_row(item, where, status))
    table = pd.DataFrame(rows).reindex(columns=summary_columns(item.config.task for item in configs))
    runs.atomic_write_csv(out / "summary.csv", table)
    return table
