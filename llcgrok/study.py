"""A study: the configs a sweep runs, each with the notebooks that run it and their
parameters, and how ``summary.csv`` is written from the run directories.

:mod:`llcgrok.sweep` executes any :class:`Study` the same way (local pool, Dask, locks,
partial and failed directories, finished configs skipped). Two kinds exist: the modular
tasks (:func:`modular_study`: ``train``, ``calibrate`` and ``llc_trajectory`` notebooks per
config) and the sequence tasks (:func:`llcgrok.seqstudy.sequence_study`: one notebook per
config, ``addition.ipynb`` or ``fraction_of_x.ipynb``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from . import runs
from .capacity import bucket_lookup, grid_table
from .config import expand, is_sequence
from .config_sections import SEQ_TASKS, ConfigError, Params, RunConfig, run_id_for
from .config_validation import set_dotted, validate_run

PER_CONFIG_NOTEBOOKS = ("train.ipynb", "calibrate.ipynb", "llc_trajectory.ipynb")
SEQ_NOTEBOOKS = {"addition": "addition.ipynb", "fraction_of_x": "fraction_of_x.ipynb"}
REPORT_NOTEBOOK = "capacity_report.ipynb"
SEQ_REPORT_NOTEBOOK = "sequence_report.ipynb"

SUMMARY_COLUMNS = [
    "run_id", "task", "num_layers", "d_model", "num_heads", "num_params", "bucket", "seed",
    "steps_to_memorization", "steps_to_grokking", "min_val_acc_after_grokking",
    "frac_evals_above_after_grokking", "num_drops_after_grokking", "final_train_acc",
    "final_val_acc", "llc_peak", "llc_peak_step", "llc_final",
    # the sampler settings behind the LLC columns: values compare only at equal nbeta and localization
    "llc_epsilon", "llc_nbeta", "llc_localization", "llc_calibrated", "status",
]
LLC_SUMMARY_COLUMNS = ["llc_peak", "llc_peak_step", "llc_final", "llc_epsilon", "llc_nbeta", "llc_localization", "llc_calibrated"]


def notebooks_for(parameters: Mapping) -> tuple[str, ...]:
    """The notebooks that run one config, from its parameters (its sections): the config
    alone decides, so a worker handed a notebooks folder loads the right ones."""
    if is_sequence(parameters):
        return (SEQ_NOTEBOOKS[parameters["task"]["name"]],)
    return PER_CONFIG_NOTEBOOKS


@dataclass
class StudyConfig:
    """One config of a study: its run id, its resolved config (RunConfig or SeqConfig) and
    the parameters its notebooks are executed with."""

    run_id: str
    config: Any
    parameters: dict

    @property
    def notebooks(self) -> tuple[str, ...]:
        return notebooks_for(self.parameters)


@dataclass
class Study:
    """What a sweep runs: the configs in order, and the writer of ``summary.csv``
    (``write_summary(out) -> DataFrame``, one row per config, finished or not)."""

    source: str
    configs: list[StudyConfig]
    write_summary: Callable[[Path], pd.DataFrame]

    @property
    def notebook_names(self) -> tuple[str, ...]:
        """Every notebook some config needs, each once, in order of first use."""
        return tuple(dict.fromkeys(name for item in self.configs for name in item.notebooks))


def config_status(out: Path, run_id: str) -> tuple[str, Path]:
    """``(status, directory)`` of one config of a sweep in ``out``: complete (``runs/``),
    failed or pending (both ``runs/.partial/``, where what was saved lies)."""
    final, partial = out / "runs" / run_id, out / "runs" / ".partial" / run_id
    if (final / "status.json").exists():
        return "complete", final
    if (out / "failed" / run_id).exists():
        return "failed", partial
    return "pending", partial


def report_notebook_for(summary: pd.DataFrame) -> str:
    """The report notebook of a sweep, from its summary: sequence tasks have their own."""
    tasks = set(summary["task"].dropna()) if "task" in summary else set()
    return SEQ_REPORT_NOTEBOOK if tasks and tasks <= set(SEQ_TASKS) else REPORT_NOTEBOOK


# --- the modular tasks -------------------------------------------------------------


def study_configs(params: Params, overrides: Mapping[str, Any] | None = None) -> list[tuple[str, RunConfig]]:
    """``[(run_id, config), ...]`` of the whole study, overrides applied to every config."""
    extra_axes = list(params.grid.axes)
    out, seen = [], set()
    for cfg in expand(params):
        for key, value in (overrides or {}).items():
            set_dotted(cfg, key, value, "--set")
        if overrides:
            validate_run(cfg, "--set")  # an override can make a valid config impossible
        run_id = run_id_for(cfg, extra_axes)
        if run_id in seen:
            raise ConfigError(f"{params.source}: two configs share the run id {run_id}")
        seen.add(run_id)
        out.append((run_id, cfg))
    return out


def _section_parameters(cfg: RunConfig) -> dict:
    data = cfg.to_dict()
    return {name: data[name] for name in ("task", "model", "train", "llc")}


def modular_study(params: Params, overrides: Mapping[str, Any] | None = None) -> Study:
    configs = study_configs(params, overrides)
    return Study(
        source=params.source,
        configs=[StudyConfig(run_id, cfg, _section_parameters(cfg)) for run_id, cfg in configs],
        write_summary=functools.partial(write_summary, params=params, configs=configs),
    )


def _llc_figures(run_dir: Path) -> dict:
    """Peak and final LLC of a run's trajectory, with the sampler settings that made them
    (one set per trajectory: llc.csv refuses to mix settings)."""
    figures = dict.fromkeys(LLC_SUMMARY_COLUMNS)
    path = run_dir / "llc.csv"
    if not path.exists():
        return figures
    table = pd.read_csv(path).sort_values("step")
    valid = table.dropna(subset=["llc_mean"])
    if valid.empty:
        return figures
    peak = valid.loc[valid["llc_mean"].idxmax()]
    first = table.iloc[0]
    return {
        "llc_peak": float(peak["llc_mean"]), "llc_peak_step": int(peak["step"]), "llc_final": float(valid["llc_mean"].iloc[-1]),
        "llc_epsilon": float(first["epsilon"]), "llc_nbeta": float(first["nbeta"]), "llc_localization": float(first["localization"]),
        "llc_calibrated": str(first.get("settings_source", "")).startswith("calibrated"),
    }


def summary_row(run_id: str, cfg: RunConfig, run_dir: Path, bucket: str, status: str) -> dict:
    row = {
        "run_id": run_id, "task": cfg.task.name, "num_layers": cfg.model.num_layers,
        "d_model": cfg.model.d_model, "num_heads": cfg.model.num_heads, "bucket": bucket,
        "seed": cfg.train.seed, "status": status,
    }
    summary = runs.read_summary(run_dir) or {}
    for key in SUMMARY_COLUMNS:
        if key in summary and key not in row:
            row[key] = summary[key]
    row.update(_llc_figures(run_dir))
    return row


def write_summary(out: Path, params: Params, configs: list[tuple[str, RunConfig]]) -> pd.DataFrame:
    """``summary.csv``: one row per config, finished or not (see ``status``)."""
    buckets = bucket_lookup(grid_table(params))
    rows = []
    for run_id, cfg in configs:
        status, where = config_status(out, run_id)
        bucket = buckets.get((cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads), "")
        rows.append(summary_row(run_id, cfg, where, bucket, status))
    table = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    runs.atomic_write_csv(out / "summary.csv", table)
    return table
