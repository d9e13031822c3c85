"""Sweeps: one executed set of notebooks per config, then the report.

What a params file's configs are, which notebooks run each and with which parameters, and
how ``summary.csv`` is written, is its study (:mod:`llcgrok.study`: the modular tasks;
:mod:`llcgrok.seqstudy`: addition and fraction_of_x); this module executes any study.

Layout of a sweep directory::

    runs/<run_id>/            finished configs: a run directory, its executed notebooks,
                              kernel.log and status.json
    runs/.partial/<run_id>/   configs under way or interrupted; a restart resumes them
    failed/<run_id>/          error.txt, the failed notebook and kernel.log of configs that failed
    summary.csv               one row per config of the study
    report.ipynb, figures/    the capacity report (report.kernel.log: its kernel's own log)
    params.yaml               the params file the sweep ran
    .lock                     flock held by the running sweep: a second sweep stops (exit 3)
    .session.json             the running sweep's id: a worker checks that it sees this directory
    .locks/<run_id>.lock      flock held while a config runs, by its worker and its kernels

A config's directory is renamed from ``runs/.partial/`` to ``runs/`` only when all its
notebooks have run, so a finished-looking run is a finished run whatever killed the sweep;
a restart re-executes the notebooks of unfinished configs, which resume what was saved
(training from ``state.pt``, the LLC trajectory from ``llc.csv``).

Configs run on this machine (one after another, or ``workers`` processes), on a Dask
``LocalCluster`` (``cluster="local"``), or on a running Dask scheduler (``scheduler=``).
Results do not depend on which: every config is seeded by its own config, every kernel
runs the same notebooks (sent with the task) with the same number of torch threads
(``threads``, default 1; the thread count changes float results in the last bits).

One config's execution is :mod:`llcgrok.sweep_execute`; the local pool and Dask are
:mod:`llcgrok.sweep_backends`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from . import runs
from .config_sections import ConfigError, Params
from .seqparams import SeqParams
from .seqstudy import sequence_study
from .study import (  # noqa: F401  (study_configs, SUMMARY_COLUMNS, ...: imported from here too)
    LLC_SUMMARY_COLUMNS,
    PER_CONFIG_NOTEBOOKS,
    SUMMARY_COLUMNS,
    Study,
    StudyConfig,
    _section_parameters,
    modular_study,
    notebooks_for,
    report_notebook_for,
    study_configs,
    summary_row,
    write_summary,
)
from .sweep_backends import _run_dask, _run_local, connect_scheduler, start_local_cluster
from .sweep_execute import (  # noqa: F401  (execute_config: public here since before the split)
    DEFAULT_THREADS,
    SESSION_FILE,
    _is_finished,
    _kernel_manager_class,
    _record_failure,
    execute_config,
    load_notebooks,
    notebooks_dir,
)


@dataclass
class SweepResult:
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    wall_time_s: float = 0.0


def study_for(params: Params | SeqParams, overrides: Mapping[str, Any] | None = None) -> Study:
    """The study of a params file: its configs, their notebooks and parameters, its summary."""
    if isinstance(params, SeqParams):
        return sequence_study(params, overrides)
    return modular_study(params, overrides)


def _check_options(workers: int, threads: int, scheduler: str | None, cluster: str | None) -> None:
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    if scheduler and cluster:
        raise ConfigError("--scheduler and --cluster exclude each other")
    if cluster not in (None, "local"):
        raise ConfigError(f"--cluster: only 'local' is known, got {cluster!r}")


def _pending_jobs(study: Study, out: Path, notebooks: Mapping, threads: int, session: str, result: SweepResult) -> list[tuple]:
    """The ``execute_config`` arguments of every config not finished yet (the finished ones
    go to ``result.skipped``); each job carries only the notebooks its config runs."""
    jobs = []
    for item in _largest_first(study.configs):
        if _is_finished(out / "runs" / item.run_id):
            result.skipped.append(item.run_id)
            continue
        own = {name: notebooks[name] for name in item.notebooks}
        jobs.append((item.run_id, item.parameters, str(out), own, threads, session))
    return jobs


def _largest_first(configs: list[StudyConfig]) -> list[StudyConfig]:
    """The configs deepest and widest first (grid order among equals). A pool of workers then
    ends on its smallest configs instead of leaving one worker on a 2x64 run while the other
    idles; the order changes no number, and summary.csv keeps the study's order."""
    def size(item: StudyConfig) -> tuple[int, int]:
        model = getattr(item.config, "model", None)
        return (getattr(model, "num_layers", 0), getattr(model, "d_model", 0))
    return sorted(configs, key=size, reverse=True)


def _collect(status: dict, out: Path, result: SweepResult, quiet: bool) -> None:
    run_id = status["run_id"]
    if status["status"] == "failed":
        result.failed[run_id] = status["error"]
        if not status.get("recorded"):
            _record_failure(out, run_id, status["error"])
        if not quiet:
            tqdm.write(f"failed: {run_id}: {status['error']}", file=sys.stderr)
    elif status["status"] == "complete":
        result.completed.append(run_id)
    else:
        result.skipped.append(run_id)


def _close(*things) -> None:
    """Close the Dask client and cluster a sweep holds (None: not held); a failing close
    must not hide the sweep's own outcome or exception."""
    for thing in things:
        if thing is not None:
            with contextlib.suppress(Exception):
                thing.close()


def _print_outcome(out: Path, result: SweepResult) -> None:
    print(
        f"sweep {out}: {len(result.completed)} run, {len(result.skipped)} skipped, "
        f"{len(result.failed)} failed in {result.wall_time_s:.0f} s",
        file=sys.stderr,
    )
    for run_id, error in result.failed.items():
        print(f"  FAILED {run_id}: {error}  (details in {out / 'failed' / run_id})", file=sys.stderr)


def run_sweep(
    params: Params | SeqParams,
    out: Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    cluster: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    quiet: bool = False,
    report: bool = True,
    threads: int = DEFAULT_THREADS,
    figure_formats: Sequence[str] | None = None,
) -> SweepResult:
    """Run every config of ``params`` (modular or sequence tasks: :func:`study_for`) into
    ``out``; skip finished ones; report at the end.

    ``workers`` local processes (or, with ``cluster="local"``, Dask LocalCluster workers),
    or the workers of the Dask scheduler at ``scheduler``; ``threads`` torch threads per
    config in every case, so that results do not depend on the choice. ``figure_formats``:
    the report's figures in each (:func:`write_report`).
    """
    _check_options(workers, threads, scheduler, cluster)
    study = study_for(params, overrides)
    notebooks = load_notebooks(names=study.notebook_names)
    out = Path(out).resolve()  # absolute: Dask workers do not share this working directory
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    result = SweepResult()
    started = time.time()
    client = connect_scheduler(scheduler) if scheduler else None  # before the lock: touches nothing
    local_cluster = None
    try:
        with runs.directory_lock(out):
            session = uuid.uuid4().hex
            runs.atomic_write_json(out / SESSION_FILE, {
                "session": session, "host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            source = Path(study.source)
            runs.atomic_write_text(out / "params.yaml", source.read_text() if source.is_file() else "")
            jobs = _pending_jobs(study, out, notebooks, threads, session, result)
            if result.skipped and not quiet:
                print(f"{len(result.skipped)} of {len(study.configs)} configs already finished: skipped", file=sys.stderr)
            if cluster == "local" and jobs:
                local_cluster, client = start_local_cluster(workers)
            stream = _run_dask(client, jobs, session, quiet) if client is not None else _run_local(jobs, workers, quiet)
            for status in stream:
                _collect(status, out, result, quiet)
            result.summary = study.write_summary(out)
            if report:
                write_report(out, quiet=quiet, formats=figure_formats)
    finally:
        _close(client, local_cluster)
    result.wall_time_s = time.time() - started
    if not quiet:
        _print_outcome(out, result)
    return result


def write_report(sweep_dir: Path, *, quiet: bool = False, formats: Sequence[str] | None = None) -> Path:
    """Execute the report notebook into ``sweep_dir/report.ipynb`` (figures under
    ``sweep_dir/figures/``, each with a CSV of its data; ``formats``, e.g. ``["png", "pdf"]``:
    every figure in each, default PNG): ``capacity_report.ipynb``, or for a sweep of the
    sequence tasks ``sequence_report.ipynb`` (told apart by summary.csv's tasks)."""
    import papermill  # lazy: the notebook stack loads only when notebooks run

    from .plots import figure_formats  # lazy: matplotlib, needed only for the report

    sweep_dir = Path(sweep_dir).resolve()
    if not (sweep_dir / "summary.csv").exists():
        raise ConfigError(f"{sweep_dir}: no summary.csv: is this a sweep directory?")
    notebook = report_notebook_for(pd.read_csv(sweep_dir / "summary.csv"))  # sequence tasks have their own
    parameters = {"sweep_dir": str(sweep_dir)}
    if formats:
        try:
            parameters["figure_formats"] = figure_formats(formats)  # checked here, not late in the kernel
        except ValueError as exc:
            raise ConfigError(f"--figure-formats: {exc}") from None
    output = sweep_dir / "report.ipynb"
    with open(sweep_dir / "report.kernel.log", "ab") as log:  # the kernel's own warnings, off the terminal
        papermill.execute_notebook(
            str(notebooks_dir() / notebook), str(output), parameters=parameters,
            progress_bar=False, cwd=str(sweep_dir), kernel_name="python3", language="python",
            kernel_manager_class=_kernel_manager_class(log_file=log),
        )
    if not quiet:
        print(f"report: {output}", file=sys.stderr)
    return output

