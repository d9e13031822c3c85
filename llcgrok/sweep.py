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
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import json
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from . import filelock, runs
from .config import ConfigError, Params
from .seqparams import SeqParams
from .seqstudy import sequence_study
from .study import (  # noqa: F401  (study_configs, SUMMARY_COLUMNS, ...: imported from here too)
    LLC_SUMMARY_COLUMNS,
    PER_CONFIG_NOTEBOOKS,
    SUMMARY_COLUMNS,
    Study,
    _section_parameters,
    modular_study,
    notebooks_for,
    report_notebook_for,
    study_configs,
    summary_row,
    write_summary,
)

DEFAULT_THREADS = 1
SESSION_FILE = ".session.json"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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


def load_notebooks(folder: str | Path | None = None, names: Sequence[str] = PER_CONFIG_NOTEBOOKS) -> dict:
    """``{name: NotebookNode}`` of the per-config notebooks ``names``. A sweep sends these to
    its workers with every task, so a worker runs exactly the notebooks the sweep was started
    with and needs no checkout of its own."""
    import nbformat

    folder = Path(folder) if folder else notebooks_dir()
    return {name: nbformat.read(folder / name, as_version=4) for name in names}


def study_for(params: Params | SeqParams, overrides: Mapping[str, Any] | None = None) -> Study:
    """The study of a params file: its configs, their notebooks and parameters, its summary."""
    if isinstance(params, SeqParams):
        return sequence_study(params, overrides)
    return modular_study(params, overrides)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _error_line(exc: BaseException) -> str:
    """One line for an exception; for a failed cell, the cell's own exception."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return _one_line(f"{ename}: {evalue}")
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return _one_line(f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__)


def _session_id(sweep: Path) -> str | None:
    try:
        return json.loads((sweep / SESSION_FILE).read_text()).get("session")
    except (OSError, ValueError):
        return None


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / "status.json").exists()


@contextlib.contextmanager
def _config_lock(path: Path) -> Iterator[int]:
    """Exclusive flock on ``path`` for one config; waits while another holder runs it.

    The holders that can outlive a sweep are the kernels of a killed sweep (they exit
    within a second or so of losing their parent) and, on Dask, a task of an earlier
    sweep's client that a worker is still running. Waiting for them, then finding the
    config finished or resuming it, keeps two writers out of one run directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        filelock.lock(fd, blocking=True)
        yield fd
    finally:
        with contextlib.suppress(OSError):
            filelock.unlock(fd)
        os.close(fd)


def this_interpreter_kernel_spec():
    """A Python kernelspec that runs ``sys.executable``, the interpreter running the sweep.

    Jupyter looks up the user-level ``python3`` kernelspec before the one of the active
    environment, so a sweep started from a virtual environment would otherwise execute its
    notebooks in whatever Python that user-level spec names, with another llcgrok or none.
    """
    from jupyter_client.kernelspec import KernelSpec

    return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                      display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} ({sys.executable})",
                      language="python")


def _kernel_manager_class(env: Mapping[str, str] | None = None, pass_fds: tuple[int, ...] = (), log_file=None):
    """A kernel manager whose kernels run this interpreter (:func:`this_interpreter_kernel_spec`),
    get ``env``, inherit ``pass_fds`` and write their own stdout/stderr (kernel logs,
    C-level warnings) to ``log_file``.

    Passing the config's lock descriptor makes the kernel a co-holder of the lock: a
    kernel orphaned by a killed sweep keeps its config locked until it exits.
    """
    from jupyter_client.manager import AsyncKernelManager

    class SweepKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self):
            if self._kernel_spec is None:
                self._kernel_spec = this_interpreter_kernel_spec()
            return self._kernel_spec

        async def start_kernel(self, **kw):
            kw["env"] = {**(kw.get("env") or os.environ), **(env or {})}
            kw["pass_fds"] = tuple(kw.get("pass_fds", ())) + tuple(pass_fds)
            if log_file is not None:
                kw.setdefault("stdout", log_file)
                kw.setdefault("stderr", log_file)
            return await super().start_kernel(**kw)

    return SweepKernelManager


def _record_failure(sweep: Path, run_id: str, error: str, detail: str = "", keep: Iterable[Path] = ()) -> None:
    failed = sweep / "failed" / run_id
    failed.mkdir(parents=True, exist_ok=True)
    for path in keep:
        if path.exists():
            shutil.copy2(path, failed / path.name)
    runs.atomic_write_text(failed / "error.txt", f"{error}\n" + (f"\n{detail}\n" if detail else ""))


def _run_notebooks(
    run_id: str, config: dict, sweep: Path, work: Path, notebooks: Mapping, threads: int, lock_fd: int
) -> str | None:
    """Execute the per-config notebooks into ``work``; the one-line error, or None."""
    import papermill

    llc = dict(config["llc"])
    # Chain processes count against the config's threads; the cap does not depend on how
    # the sweep runs, so neither do the results.
    llc["cores"] = max(1, min(int(llc.get("cores", 1)), threads))
    parameters = {**config, "llc": llc, "run_dir": str(work), "quiet": True}
    env = {name: str(threads) for name in THREAD_VARIABLES}
    with open(work / "kernel.log", "ab") as log:
        # POSIX only: Windows cannot pass descriptors to a child, nor share the lock with it.
        manager = _kernel_manager_class(env, (lock_fd,) if os.name == "posix" else (), log)
        for name, notebook in notebooks.items():
            output = work / name
            try:
                papermill.execute_notebook(
                    copy.deepcopy(notebook), str(output), parameters=parameters, progress_bar=False,
                    cwd=str(work), kernel_name="python3", language="python", kernel_manager_class=manager,
                )
            except Exception as exc:  # a failing cell, a dead kernel: this config fails, the sweep goes on
                error = f"{name}: {_error_line(exc)}"
                log.flush()
                _record_failure(sweep, run_id, error, str(exc), keep=(output, work / "kernel.log"))
                return error
    return None


def _dask_worker_name() -> str | None:
    """The Dask worker running this config (None outside one): where a config ran is recorded."""
    try:
        from distributed import get_worker  # lazy: Dask is an optional extra
        return str(get_worker().name)
    except (ImportError, ValueError):
        return None


def execute_config(
    run_id: str,
    config: dict,
    sweep_dir: str,
    notebooks: Mapping | str,
    threads: int = DEFAULT_THREADS,
    session: str | None = None,
) -> dict:
    """Run one config's notebooks into ``runs/.partial/<run_id>`` and move it into place.

    Runs in a worker (this process, a local pool process or a Dask worker thread) and
    returns a small status dict; a failing config does not raise, so one failure does not
    stop the sweep. ``notebooks`` is ``{name: NotebookNode}`` or a folder; ``session``,
    when given, must match the sweep directory's ``.session.json`` (a worker that does not
    share the sweep's filesystem would otherwise write its results where nobody looks).
    """
    sweep = Path(sweep_dir)
    if session is not None and _session_id(sweep) != session:
        return {
            "run_id": run_id, "status": "failed", "recorded": False,
            "error": f"worker on {socket.gethostname()} does not see the sweep directory {sweep}: "
                     "workers need the output directory on a shared filesystem, at the same path",
        }
    if isinstance(notebooks, (str, os.PathLike)):
        notebooks = load_notebooks(notebooks, notebooks_for(config))
    final = sweep / "runs" / run_id
    if _is_finished(final):
        return {"run_id": run_id, "status": "skipped"}
    work = sweep / "runs" / ".partial" / run_id
    started = time.time()
    with _config_lock(sweep / ".locks" / f"{run_id}.lock") as lock_fd:
        if _is_finished(final):  # finished by a leftover task of an earlier sweep while we waited
            return {"run_id": run_id, "status": "skipped"}
        if final.exists():
            # A run directory without status.json is not a finished run (copied by hand, or
            # left by an older version): resume from what it holds.
            if work.exists():
                error = f"{final} is incomplete (no status.json) and {work} exists too: move one away"
                _record_failure(sweep, run_id, error)
                return {"run_id": run_id, "status": "failed", "error": error, "recorded": True}
            work.parent.mkdir(parents=True, exist_ok=True)
            os.replace(final, work)
        work.mkdir(parents=True, exist_ok=True)
        if not _is_finished(work):  # else: killed between status.json and the rename
            error = _run_notebooks(run_id, config, sweep, work, notebooks, threads, lock_fd)
            if error is not None:
                return {"run_id": run_id, "status": "failed", "error": error, "recorded": True}
            runs.atomic_write_json(work / "status.json", {
                "status": "complete", "seconds": round(time.time() - started, 1),
                "host": socket.gethostname(), "threads": threads, "pid": os.getpid(), "worker": _dask_worker_name(),
            })
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, final)  # atomic on one filesystem: the config appears whole
        shutil.rmtree(sweep / "failed" / run_id, ignore_errors=True)
    return {"run_id": run_id, "status": "complete"}


def _progress(items: Iterable, total: int, quiet: bool):
    return tqdm(items, total=total, disable=quiet, desc="configs", unit="config")


def _lost(run_id: str, exc: BaseException, where: str) -> dict:
    return {"run_id": run_id, "status": "failed", "recorded": False, "error": f"{where}: {_error_line(exc)}"}


def _exit_with_parent(parent_pid: int) -> None:
    """Pool-process initializer: exit when the sweep process is gone (killed with SIGKILL,
    it cannot stop its pool), so that no orphan keeps running a config."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="llcgrok-parent-watch", daemon=True).start()


def _run_local(jobs: list[tuple], workers: int, quiet: bool) -> Iterator[dict]:
    if workers <= 1 or len(jobs) <= 1:
        for job in _progress(jobs, len(jobs), quiet):
            try:
                yield execute_config(*job)
            except Exception as exc:  # e.g. the disk is full: this config fails, the sweep goes on
                yield _lost(job[0], exc, "sweep")
        return
    # spawn, not fork: a forked pool process would inherit the sweep's lock on the output
    # directory and, orphaned, hold it after the sweep died.
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent, initargs=(os.getpid(),),
    )
    done = False
    try:
        futures = {pool.submit(execute_config, *job): job[0] for job in jobs}
        for future in _progress(concurrent.futures.as_completed(futures), len(futures), quiet):
            try:
                yield future.result()
            except Exception as exc:  # the pool process died (killed, out of memory)
                yield _lost(futures[future], exc, "worker process")
        done = True
    finally:
        if not done:  # interrupted: stop the configs under way now; a restart resumes them
            terminate = getattr(pool, "terminate_workers", None)
            if terminate is not None:
                terminate()
            else:
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    with contextlib.suppress(Exception):
                        process.terminate()
        pool.shutdown(wait=done, cancel_futures=True)


def connect_scheduler(address: str):
    """A Dask client on the scheduler at ``address``, or a one-line ConfigError.

    The wait is Dask's ``distributed.comm.timeouts.connect`` (30 s by default; set
    ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s`` to shorten it).
    """
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--scheduler/--cluster need Dask: pip install 'dask[distributed]'") from None
    try:
        return Client(address, set_as_default=False)
    except Exception as exc:  # OSError (timeout, refused, unknown host), ValueError (bad scheme)
        raise ConfigError(f"--scheduler: cannot reach a Dask scheduler at {address}: {_one_line(exc)}") from None


def start_local_cluster(workers: int):
    """A Dask ``LocalCluster`` of ``workers`` one-thread worker processes, and its client."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--scheduler/--cluster need Dask: pip install 'dask[distributed]'") from None
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True,
        dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
    )
    return cluster, Client(cluster, set_as_default=False)


def _run_dask(client, jobs: list[tuple], session: str, quiet: bool) -> Iterator[dict]:
    from distributed import as_completed

    if not quiet:
        workers = client.scheduler_info().get("workers", {})
        note = "" if workers else " (none yet: configs wait until workers connect)"
        print(f"Dask scheduler {client.scheduler.address}: {len(workers)} workers{note}; "
              f"dashboard {client.dashboard_link}", file=sys.stderr)
    # pure=False and a per-sweep key: a config resubmitted by a restart must run again (or
    # find itself finished), never be served a result cached for another client or sweep.
    futures = {
        client.submit(execute_config, *job, pure=False, key=f"llcgrok-{job[0]}-{session[:12]}"): job[0]
        for job in jobs
    }
    done = False
    try:
        for future in _progress(as_completed(list(futures), loop=client.loop), len(futures), quiet):
            try:
                yield future.result()
            except Exception as exc:  # KilledWorker (the config killed every worker it ran on), lost scheduler
                yield _lost(futures[future], exc, "Dask")
        done = True
    finally:
        if not done:  # queued configs must not start after this sweep is gone
            with contextlib.suppress(Exception):
                client.cancel(list(futures), force=True)


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
    for item in study.configs:
        if _is_finished(out / "runs" / item.run_id):
            result.skipped.append(item.run_id)
            continue
        own = {name: notebooks[name] for name in item.notebooks}
        jobs.append((item.run_id, item.parameters, str(out), own, threads, session))
    return jobs


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
    import papermill

    from .plots import figure_formats

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

