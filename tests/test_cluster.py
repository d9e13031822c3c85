"""Sweeps on Dask: a real `dask scheduler` with two `dask worker` processes on 127.0.0.1,
and `--cluster local`, give the summary.csv of a local run of the same sweep, byte for byte.

Everything started here runs in its own session and is killed by process group in a
finalizer, whatever the test's outcome.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from test_sweep import write_tiny_study

from llcgrok.sweep import SESSION_FILE

pytestmark = pytest.mark.slow

LLCGROK = [sys.executable, "-m", "llcgrok.cli"]
DASK = [sys.executable, "-m", "dask"]  # the `dask` command of this environment
RUN_IDS = ["x_plus_y-L1-d16-h2-s0", "x_plus_y-L2-d16-h2-s0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(params: Path, out: Path, *options, env=None, timeout=600):
    return subprocess.run([*LLCGROK, "sweep", str(params), "--out", str(out), "--no-report", "--quiet", *options],
                          capture_output=True, text=True, env=env, timeout=timeout)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory):
    """``tcp://127.0.0.1:PORT`` of a running scheduler with two one-thread workers."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        log = open(folder / f"{name}.log", "wb")
        started.append(subprocess.Popen([*DASK, *args], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=folder, start_new_session=True))
        log.close()

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard")
        for i in range(2):
            start(f"worker{i}", "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"worker{i}",
                  "--local-directory", str(folder / f"worker{i}"))
        with Client(address, timeout="60s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    except Exception:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.log")))
        raise RuntimeError(f"the Dask cluster did not come up:\n{logs}") from None
    finally:
        for process in reversed(started):
            stop(process)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The tiny sweep run locally, one config after another: the reference."""
    folder = tmp_path_factory.mktemp("local")
    params = write_tiny_study(folder / "tiny.yaml")
    done = sweep(params, folder / "sweep", "--workers", "1")
    assert done.returncode == 0, done.stderr
    return params, folder / "sweep"


def assert_same_results(reference: Path, other: Path) -> None:
    expected = pd.read_csv(reference / "summary.csv")
    assert sorted(expected["run_id"]) == RUN_IDS and (expected["status"] == "complete").all()
    assert expected["llc_final"].notna().all()
    # Every column is deterministic (no timings): the files are identical.
    assert (other / "summary.csv").read_text() == (reference / "summary.csv").read_text()
    for run_id in RUN_IDS:
        for name in ("metrics.csv", "llc.csv", "calibration.csv"):
            mine, theirs = reference / "runs" / run_id / name, other / "runs" / run_id / name
            if mine.exists():
                a, b = pd.read_csv(mine), pd.read_csv(theirs)
                timing = [c for c in a.columns if c in ("seconds", "wall_time_s", "ms_per_step")]
                pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing), check_exact=True)


def test_sweep_on_a_running_scheduler_matches_the_local_sweep(tmp_path, dask_scheduler, local_reference):
    params, reference = local_reference
    out = tmp_path / "sweep"
    done = sweep(params, out, "--scheduler", dask_scheduler)
    assert done.returncode == 0, done.stderr
    assert_same_results(reference, out)
    statuses = [(out / "runs" / r / "status.json").read_text() for r in RUN_IDS]
    assert all('"threads": 1' in s for s in statuses)
    # The configs ran on the workers, not in the sweep's own (client) process.
    records = [json.loads(s) for s in statuses]
    client_pid = json.loads((out / SESSION_FILE).read_text())["pid"]
    assert {r["worker"] for r in records} <= {"worker0", "worker1"} and all(r["worker"] for r in records)
    assert all(r["pid"] != client_pid for r in records)


def test_sweep_on_a_local_cluster_matches_the_local_sweep(tmp_path, local_reference):
    params, reference = local_reference
    # The reference sweep with one config taken away: the LocalCluster computes that one
    # (the other is skipped) and the summary must come out the same.
    out = tmp_path / "sweep"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "runs" / RUN_IDS[1])
    (out / "summary.csv").unlink()
    done = sweep(params, out, "--cluster", "local", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert (out / "runs" / RUN_IDS[1] / "status.json").exists()
    assert_same_results(reference, out)


def test_unreachable_scheduler_is_one_line_and_touches_nothing(tmp_path):
    params = write_tiny_study(tmp_path / "tiny.yaml")
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    done = sweep(params, tmp_path / "sweep", "--scheduler", address, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert address in lines[0] and "cannot reach" in lines[0], lines[0]
    assert not (tmp_path / "sweep").exists()


def test_a_worker_that_does_not_see_the_sweep_directory_fails_the_config_clearly(tmp_path):
    """A worker without the shared filesystem must not run the config somewhere unseen."""
    from llcgrok.sweep import execute_config

    status = execute_config("x_plus_y-L1-d16-h2-s0", {}, str(tmp_path / "elsewhere"), {}, 1, session="abc")
    assert status["status"] == "failed" and "shared filesystem" in status["error"]
    assert not (tmp_path / "elsewhere").exists()
