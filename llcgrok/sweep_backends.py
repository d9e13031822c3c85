"""Where a sweep's configs run: on this machine, one after another or in a pool of
``workers`` processes, or on Dask workers (a ``LocalCluster``, or a running scheduler).

Each backend runs :func:`~llcgrok.sweep_execute.execute_config` for every job and yields
its status dicts as they finish; a config whose worker died is yielded as a failure, so
the sweep goes on.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from .config_sections import ConfigError
from .sweep_execute import _error_line, _one_line, execute_config


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
        from distributed import Client  # lazy: Dask is an optional extra
    except ImportError:
        raise ConfigError("--scheduler/--cluster need Dask: pip install 'dask[distributed]'") from None
    try:
        return Client(address, set_as_default=False)
    except Exception as exc:  # OSError (timeout, refused, unknown host), ValueError (bad scheme)
        raise ConfigError(f"--scheduler: cannot reach a Dask scheduler at {address}: {_one_line(exc)}") from None


def start_local_cluster(workers: int):
    """A Dask ``LocalCluster`` of ``workers`` one-thread worker processes, and its client."""
    try:
        from distributed import Client, LocalCluster  # lazy: Dask is an optional extra
    except ImportError:
        raise ConfigError("--scheduler/--cluster need Dask: pip install 'dask[distributed]'") from None
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True,
        dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
    )
    return cluster, Client(cluster, set_as_default=False)


def _run_dask(client, jobs: list[tuple], session: str, quiet: bool) -> Iterator[dict]:
    from distributed import as_completed  # lazy: Dask is an optional extra

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
