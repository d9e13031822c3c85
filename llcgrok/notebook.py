"""What the notebooks call: parameters in, a validated config and a run directory out.

papermill injects each params section as a notebook variable and replaces it whole; the
functions here merge those (possibly partial) sections onto the library defaults, so a
notebook works the same under papermill, in Jupyter and in Colab.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import pandas as pd

from . import runs
from .config import Params, RunConfig, load_params, params_from_sections, resolve_run


def config_from_parameters(
    params_file: str | None = None,
    *,
    task: Mapping | None = None,
    model: Mapping | None = None,
    train: Mapping | None = None,
    llc: Mapping | None = None,
    grid: Mapping | None = None,
) -> RunConfig:
    """One run's config from a notebook's parameters.

    With ``params_file``, its sections are the base and the notebook's sections are
    merged on top, key by key; without it, the sections merge onto the defaults. A study's
    grid axes contribute their first value (as ``llcgrok train`` does).
    """
    return resolve_run(params_from_parameters(params_file, task=task, model=model, train=train, llc=llc, grid=grid))


def params_from_parameters(
    params_file: str | None = None,
    *,
    task: Mapping | None = None,
    model: Mapping | None = None,
    train: Mapping | None = None,
    llc: Mapping | None = None,
    grid: Mapping | None = None,
) -> Params:
    """The whole study (base config and grid) from a notebook's parameters, merged as
    :func:`config_from_parameters` merges them."""
    if params_file:
        base = load_params(params_file)
        data = base.to_dict()
        sections = {}
        for name, extra in (("task", task), ("model", model), ("train", train), ("llc", llc)):
            merged = dict(data[name])
            merged.update(extra or {})
            sections[name] = merged
        grid_section = dict(data["grid"])
        grid_section.update(grid or {})
        params = params_from_sections(**sections, grid=grid_section, source=str(params_file))
    else:
        params = params_from_sections(task=task, model=model, train=train, llc=llc, grid=grid, source="notebook parameters")
    return params


def run_dir_for(cfg: RunConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """``run_dir`` if given, else ``outputs/runs/<run_id>`` under the working directory."""
    return Path(run_dir) if run_dir else Path("outputs") / "runs" / cfg.run_id


def ensure_trained(cfg: RunConfig, run_dir: Path, quiet: bool = False) -> tuple[pd.DataFrame, dict]:
    """Train the run unless it is finished (resuming an interrupted one); return its
    metrics table and summary."""
    from .train import train

    if runs.is_trained(run_dir) and runs.same_training(runs.read_config(run_dir), cfg):
        return runs.read_metrics(run_dir), runs.read_summary(run_dir)
    result = train(cfg, run_dir, quiet=quiet)
    return result.metrics, result.summary


def summary_frame(summary: Mapping) -> pd.DataFrame:
    """A run summary as a two-column table for display."""
    return pd.DataFrame({"figure": list(summary), "value": [summary[k] for k in summary]})
