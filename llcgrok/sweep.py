"""Sweeps: one executed set of notebooks per config, then the report.

Layout of a sweep directory::

    runs/<run_id>/            finished configs (each a run directory plus its executed notebooks)
    runs/.partial/<run_id>/   configs under way or interrupted; a restart resumes them
    failed/<run_id>/          the failed notebook(s) and error.txt of configs that failed
    summary.csv               one row per config of the study
    report.ipynb, figures/    the capacity report

A config's directory is renamed from ``runs/.partial/`` to ``runs/`` only when all its
notebooks have run, so a finished-looking run is a finished run whatever killed the sweep.
Configs run on this machine (one after another, or ``workers`` processes), on a Dask
``LocalCluster`` (``cluster="local"``), or on a running Dask scheduler (``scheduler=``).
Results do not depend on which: every config is seeded by its own config.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
from tqdm.auto import tqdm

from . import runs
from .capacity import bucket_lookup, grid_table
from .config import ConfigError, Params, RunConfig, expand, run_id_for, set_dotted

PER_CONFIG_NOTEBOOKS = ("train.ipynb", "calibrate.ipynb", "llc_trajectory.ipynb")
REPORT_NOTEBOOK = "capacity_report.ipynb"

SUMMARY_COLUMNS = [
    "run_id", "task", "num_layers", "d_model", "num_heads", "num_params", "bucket", "seed",
    "steps_to_memorization", "steps_to_grokking", "min_val_acc_after_grokking",
    "frac_evals_above_after_grokking", "num_drops_after_grokking", "final_train_acc",
    "final_val_acc", "llc_peak", "llc_peak_step", "llc_final", "status",
]


@dataclass
class SweepResult:
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    wall_time_s: float = 0.0


def notebooks_dir() -> Path:
    """The repository's ``notebooks/`` folder (next to the package in a checkout)."""
    env = os.environ.get("LLCGROK_NOTEBOOKS")
    folder = Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks"
    if not (folder / "train.ipynb").exists():
        raise ConfigError(
            f"notebooks not found in {folder}: run from a clone of the repository or set LLCGROK_NOTEBOOKS"
        )
    return folder


def study_configs(params: Params, overrides: Mapping[str, Any] | None = None) -> list[tuple[str, RunConfig]]:
    """``[(run_id, config), ...]`` of the whole study, overrides applied to every config."""
    extra_axes = list(params.grid.axes)
    out, seen = [], set()
    for cfg in expand(params):
        for key, value in (overrides or {}).items():
            set_dotted(cfg, key, value, "--set")
        run_id = run_id_for(cfg, extra_axes)
        if run_id in seen:
            raise ConfigError(f"{params.source}: two configs share the run id {run_id}")
        seen.add(run_id)
        out.append((run_id, cfg))
    return out


def _section_parameters(cfg: RunConfig) -> dict:
    data = cfg.to_dict()
    return {name: data[name] for name in ("task", "model", "train", "llc")}


def execute_config(
    run_id: str,
    config: dict,
    sweep_dir: str,
    notebook_folder: str,
    threads: int | None = None,
    llc_cores: int | None = None,
) -> dict:
    """Run one config's notebooks into ``runs/.partial/<run_id>`` and move it into place.

    Runs in a worker process (local pool or Dask worker); returns a small status dict and
    never raises for a failing config, so one failure does not stop the sweep.
    """
    import papermill

    sweep = Path(sweep_dir)
    final = sweep / "runs" / run_id
    if (final / "status.json").exists():
        return {"run_id": run_id, "status": "skipped"}
    work = sweep / "runs" / ".partial" / run_id
    work.mkdir(parents=True, exist_ok=True)
    if threads:
        # Kernels inherit the environment: cap torch's threads so that parallel
        # configs share the cores instead of oversubscribing them.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
    parameters = {**config, "run_dir": str(work), "quiet": True, "llc_cores": llc_cores}
    started = time.time()
    for name in PER_CONFIG_NOTEBOOKS:
        output = work / name
        try:
            papermill.execute_notebook(
                str(Path(notebook_folder) / name), str(output), parameters=parameters,
                progress_bar=False, cwd=str(work), kernel_name="python3",
            )
        except Exception as exc:  # papermill wraps the cell's error; keep its last line
            message = str(exc).strip().splitlines()
            reason = next((line for line in reversed(message) if line.strip()), type(exc).__name__)
            failed = sweep / "failed" / run_id
            failed.mkdir(parents=True, exist_ok=True)
            if output.exists():
                shutil.copy2(output, failed / name)
            runs.atomic_write_text(failed / "error.txt", f"{name}: {reason}\n\n{exc}\n")
            return {"run_id": run_id, "status": "failed", "error": f"{name}: {reason}"}
    runs.atomic_write_json(work / "status.json", {"status": "complete", "seconds": round(time.time() - started, 1)})
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, final)  # atomic on one filesystem: the config appears whole
    shutil.rmtree(sweep / "failed" / run_id, ignore_errors=True)
    return {"run_id": run_id, "status": "complete"}


def _progress(items: Iterable, total: int, quiet: bool):
    return tqdm(items, total=total, disable=quiet, desc="configs", unit="config")


def _run_local(jobs: list[tuple], workers: int, quiet: bool) -> Iterable[dict]:
    if workers <= 1:
        for job in _progress(jobs, len(jobs), quiet):
            yield execute_config(*job)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(execute_config, *job) for job in jobs]
        for future in _progress(concurrent.futures.as_completed(futures), len(futures), quiet):
            yield future.result()


def _run_dask(jobs: list[tuple], scheduler: str | None, cluster: str | None, workers: int, quiet: bool) -> Iterable[dict]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ConfigError("--scheduler/--cluster need Dask: pip install 'dask[distributed]'") from None
    local = None
    if cluster == "local":
        local = LocalCluster(n_workers=max(workers, 1), threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(local)
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"--scheduler: cannot reach a Dask scheduler at {scheduler} ({exc})") from None
    try:
        # pure=False: a resubmitted config must run again, not be served from a cache.
        futures = [client.submit(execute_config, *job, pure=False, key=f"llcgrok-{job[0]}") for job in jobs]
        for future in _progress(as_completed(futures), len(futures), quiet):
            yield future.result()
    finally:
        client.close()
        if local is not None:
            local.close()


def run_sweep(
    params: Params,
    out: Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    cluster: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    quiet: bool = False,
    report: bool = True,
) -> SweepResult:
    """Run every config of ``params`` into ``out``; skip finished ones; report at the end."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    configs = study_configs(params, overrides)
    folder = notebooks_dir()
    out = Path(out)
    result = SweepResult()
    started = time.time()
    with runs.directory_lock(out):
        runs.atomic_write_text(out / "params.yaml", Path(params.source).read_text() if Path(params.source).is_file() else "")
        cores = os.cpu_count() or 1
        parallel = workers if (workers > 1 or scheduler or cluster) else 1
        threads = max(1, cores // parallel) if not scheduler else None
        jobs = []
        for run_id, cfg in configs:
            if (out / "runs" / run_id / "status.json").exists():
                result.skipped.append(run_id)
                continue
            jobs.append((run_id, _section_parameters(cfg), str(out), str(folder), threads, threads))
        if result.skipped and not quiet:
            print(f"{len(result.skipped)} of {len(configs)} configs already finished: skipped", file=sys.stderr)
        stream = _run_dask(jobs, scheduler, cluster, workers, quiet) if (scheduler or cluster) else _run_local(jobs, workers, quiet)
        for status in stream:
            if status["status"] == "failed":
                result.failed[status["run_id"]] = status["error"]
                if not quiet:
                    tqdm.write(f"failed: {status['run_id']}: {status['error']}", file=sys.stderr)
            elif status["status"] == "complete":
                result.completed.append(status["run_id"])
            else:
                result.skipped.append(status["run_id"])
        result.summary = write_summary(out, params, configs)
        if report:
            write_report(out, quiet=quiet)
    result.wall_time_s = time.time() - started
    if not quiet:
        print(
            f"sweep {out}: {len(result.completed)} run, {len(result.skipped)} skipped, "
            f"{len(result.failed)} failed in {result.wall_time_s:.0f} s",
            file=sys.stderr,
        )
        for run_id, error in result.failed.items():
            print(f"  FAILED {run_id}: {error}  (notebook in {out / 'failed' / run_id})", file=sys.stderr)
    return result


def _llc_figures(run_dir: Path) -> dict:
    path = run_dir / "llc.csv"
    if not path.exists():
        return {"llc_peak": None, "llc_peak_step": None, "llc_final": None}
    table = pd.read_csv(path).sort_values("step")
    valid = table.dropna(subset=["llc_mean"])
    if valid.empty:
        return {"llc_peak": None, "llc_peak_step": None, "llc_final": None}
    peak = valid.loc[valid["llc_mean"].idxmax()]
    return {"llc_peak": float(peak["llc_mean"]), "llc_peak_step": int(peak["step"]), "llc_final": float(valid["llc_mean"].iloc[-1])}


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
        final, partial = out / "runs" / run_id, out / "runs" / ".partial" / run_id
        if (final / "status.json").exists():
            status, where = "complete", final
        elif (out / "failed" / run_id).exists():
            status, where = "failed", partial
        else:
            status, where = "pending", partial
        bucket = buckets.get((cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads), "")
        rows.append(summary_row(run_id, cfg, where, bucket, status))
    table = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    runs.atomic_write_csv(out / "summary.csv", table)
    return table


def write_report(sweep_dir: Path, *, quiet: bool = False) -> Path:
    """Execute the capacity report notebook into ``sweep_dir/report.ipynb`` (figures under
    ``sweep_dir/figures/``)."""
    import papermill

    sweep_dir = Path(sweep_dir).resolve()
    if not (sweep_dir / "summary.csv").exists():
        raise ConfigError(f"{sweep_dir}: no summary.csv: is this a sweep directory?")
    output = sweep_dir / "report.ipynb"
    papermill.execute_notebook(
        str(notebooks_dir() / REPORT_NOTEBOOK), str(output), parameters={"sweep_dir": str(sweep_dir)},
        progress_bar=False, cwd=str(sweep_dir), kernel_name="python3",
    )
    if not quiet:
        print(f"report: {output}", file=sys.stderr)
    return output

