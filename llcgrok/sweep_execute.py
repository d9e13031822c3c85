"""One config of a sweep: its notebooks executed into ``runs/.partial/<run_id>``, then the
directory moved into ``runs/`` whole (the sweep directory's layout: :mod:`llcgrok.sweep`).

:func:`execute_config` runs wherever a worker is (the sweep's own process, a local pool
process, a Dask worker), under a per-config lock that the config's kernels share, and
returns a small status dict instead of raising, so that one failing config does not stop
the sweep.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from . import filelock, runs
from .config_sections import ConfigError
from .study import PER_CONFIG_NOTEBOOKS, notebooks_for

DEFAULT_THREADS = 1
SESSION_FILE = ".session.json"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
    import nbformat  # lazy: the notebook stack loads only when notebooks run

    folder = Path(folder) if folder else notebooks_dir()
    return {name: nbformat.read(folder / name, as_version=4) for name in names}

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
    from jupyter_client.kernelspec import KernelSpec  # lazy: the notebook stack loads only when notebooks run

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
    from jupyter_client.manager import AsyncKernelManager  # lazy: the notebook stack loads only when notebooks run

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
    import papermill  # lazy: the notebook stack loads only when notebooks run

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
