"""A sweep killed with SIGKILL, then started again, completes with nothing lost or redone;
two sweeps on one output directory do not run at once.

The study has two configs run one after the other (``--workers 1``; the default runs one
config per CPU, and B would then train alongside A): A (30 training steps) finishes first;
B (3,000 steps, six checkpoints) is killed twice: during its training, then during its
LLC trajectory. Each kill waits for an observable state on disk, not for a time.
"""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from llcgrok import runs
from llcgrok.config import dump_yaml

pytestmark = pytest.mark.slow

LLCGROK = [sys.executable, "-m", "llcgrok.cli"]
ONE_AT_A_TIME = ["--workers", "1"]
STUDY = {
    "task": {"name": "x_plus_y", "p": 11},
    "model": {"num_layers": 1, "d_model": 16, "num_heads": 2},
    "train": {"num_steps": 30, "batch_size": 64, "eval_batches": 1, "num_checkpoints": 5},
    "llc": {
        "num_chains": 1, "num_draws": 150, "batch_size": 32, "cores": 1, "calibrate": True, "num_burnin_steps": 5,
        "curvature_probes": 2, "calibration": {"epsilons": [1.0e-4, 1.0e-3], "nbetas": [10.0], "localizations": [100.0]},
    },
    # Checkpoints: A at steps 0, 10, 20, 30; B at 0, 10, 40, 170, 720, 3000.
    "grid": {"axes": {"train.num_steps": [30, 3000]}, "seeds": [0]},
}
A, B = "x_plus_y-L1-d16-h2-num_steps30-s0", "x_plus_y-L1-d16-h2-num_steps3000-s0"
B_CHECKPOINTS = [0, 10, 40, 170, 720, 3000]


def files(folder: Path) -> dict:
    """Every file under ``folder``: (hash, mtime); a rewrite shows even with equal bytes."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def csv_rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


class Sweeps:
    """Starts `llcgrok sweep` in its own session; kills what it started, whatever happens."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[subprocess.Popen] = []

    def start(self, params: Path, out: Path) -> subprocess.Popen:
        log = open(self.folder / f"sweep{len(self.started)}.log", "w+")
        process = subprocess.Popen([*LLCGROK, "sweep", str(params), "--out", str(out), "--no-report", "--quiet", *ONE_AT_A_TIME],
                                   stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        process.log = log
        self.started.append(process)
        return process

    @staticmethod
    def output(process) -> str:
        process.log.seek(0)
        return process.log.read()

    def wait_until(self, process, condition, what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout  # a guard against hanging, not a timing assertion
        while time.monotonic() < deadline:
            if condition():
                return
            if process.poll() is not None:
                pytest.fail(f"the sweep ended (exit {process.returncode}) before {what}:\n{self.output(process)}")
            time.sleep(0.01)
        pytest.fail(f"no {what} after {timeout} s:\n{self.output(process)}")

    @staticmethod
    def kill(process, with_kernels: bool) -> list[psutil.Process]:
        """SIGKILL the sweep's process group; its kernels (own sessions) too if asked, else
        they are left orphaned, as `kill -9 -PGID` leaves them. Returns the kernels."""
        kernels = [p for p in psutil.Process(process.pid).children(recursive=True)
                   if "ipykernel" in " ".join(_cmdline(p))]
        os.killpg(process.pid, signal.SIGKILL)
        if with_kernels:
            for kernel in kernels:
                with contextlib.suppress(psutil.NoSuchProcess):
                    kernel.kill()
        process.wait(30)
        return kernels

    def stop_all(self) -> None:
        for process in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            process.log.close()
        # Kernels live in sessions of their own: find them by their working directory.
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if Path(proc.cwd()).is_relative_to(self.folder):
                    proc.kill()


def _cmdline(proc: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        return proc.cmdline()
    return []


@pytest.fixture
def sweeps(tmp_path):
    manager = Sweeps(tmp_path)
    yield manager
    manager.stop_all()


def test_killed_sweep_restarts_and_completes_without_redoing_work(tmp_path, sweeps):
    params = tmp_path / "study.yaml"
    params.write_text(dump_yaml(STUDY))
    out = tmp_path / "sweep"
    b_partial, b_final = out / "runs" / ".partial" / B, out / "runs" / B

    # ---- run 1: A finishes; B is killed during training, after its checkpoint at step 720.
    first = sweeps.start(params, out)
    sweeps.wait_until(first, lambda: (out / ".session.json").exists(), "the first sweep holding the directory")
    # A second sweep on the same directory while the first runs (config A takes the first
    # several seconds): refused with exit code 3.
    second = subprocess.run([*LLCGROK, "sweep", str(params), "--out", str(out), "--no-report", *ONE_AT_A_TIME],
                            capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first sweep ended before the second one was refused"
    assert second.returncode == 3, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "in use" in second.stderr, second.stderr
    sweeps.wait_until(first, lambda: (out / "runs" / A / "status.json").exists(), "config A finished")
    sweeps.wait_until(first, lambda: runs.checkpoint_path(b_partial, 720).exists(), "B's checkpoint at step 720")
    orphans = sweeps.kill(first, with_kernels=False)
    # B's kernel, orphaned, exits by itself (within a second or two); its next checkpoint
    # (step 3000) is out of its reach by then.
    assert orphans, "no kernel was running"
    gone, alive = psutil.wait_procs(orphans, timeout=60)
    assert not alive, f"orphaned kernels still running: {alive}"

    assert sorted(p.name for p in (out / "runs").iterdir()) == [".partial", A]  # B is not taken for finished
    assert not (b_partial / "summary.json").exists(), "B finished training before the kill"
    a_files = files(out / "runs" / A)
    b_checkpoints = {step: path.stat().st_mtime_ns for step, path in runs.list_checkpoints(b_partial)}
    assert sorted(b_checkpoints) == B_CHECKPOINTS[:5]
    b_metrics = pd.read_csv(b_partial / "metrics.csv")
    assert b_metrics["step"].iloc[-1] == 720

    # A run directory in runs/ without status.json (copied by hand, say) is not a finished
    # run either: the restart resumes from it.
    b_partial.rename(b_final)

    # ---- run 2: B resumes training at step 720; killed, kernels and all, during its LLC trajectory.
    restart = sweeps.start(params, out)
    llc_csv = b_partial / "llc.csv"
    sweeps.wait_until(restart, lambda: 1 <= csv_rows(llc_csv) < len(B_CHECKPOINTS) - 1, "B's LLC trajectory under way")
    sweeps.kill(restart, with_kernels=True)

    assert not b_final.exists() and not (out / "runs" / B).exists()
    assert (b_partial / "summary.json").exists()  # training finished in run 2 ...
    for step, mtime in b_checkpoints.items():  # ... from the checkpoint at 720: earlier ones untouched
        assert runs.checkpoint_path(b_partial, step).stat().st_mtime_ns == mtime, step
    assert [s for s, _ in runs.list_checkpoints(b_partial)] == B_CHECKPOINTS
    resumed = pd.read_csv(b_partial / "metrics.csv")
    pd.testing.assert_frame_equal(resumed.iloc[: len(b_metrics)], b_metrics)
    assert resumed["step"].is_monotonic_increasing and resumed["step"].is_unique and resumed["step"].iloc[-1] == 3000
    estimated = pd.read_csv(llc_csv)
    assert 1 <= len(estimated) < len(B_CHECKPOINTS)

    # ---- run 3: completes; A untouched, B's LLC trajectory continues where it stopped.
    final = sweeps.start(params, out)
    assert final.wait(600) == 0, sweeps.output(final)
    assert files(out / "runs" / A) == a_files
    assert (b_final / "status.json").exists() and not b_partial.exists()
    assert not (out / "failed").exists()
    trajectory = pd.read_csv(b_final / "llc.csv")
    assert sorted(trajectory["step"]) == B_CHECKPOINTS
    # The rows estimated before the kill are kept, not estimated again: their own timings
    # ("seconds") would differ if they had been.
    pd.testing.assert_frame_equal(trajectory.iloc[: len(estimated)], estimated, check_dtype=False, rtol=1e-12)
    assert "seconds" in estimated.columns
    summary = pd.read_csv(out / "summary.csv").set_index("run_id")
    assert list(summary["status"]) == ["complete", "complete"]
    assert summary["llc_final"].notna().all()
    print(f"interrupted: 1 config of 2 ({B}), twice: in training after step 720, then in its LLC "
          f"trajectory after {len(estimated)} of {len(B_CHECKPOINTS)} checkpoints; {A} finished before and was left alone")


def test_second_sweep_on_the_same_directory_exits_3_and_touches_nothing(tmp_path):
    params = tmp_path / "study.yaml"
    params.write_text(dump_yaml(STUDY))
    out = tmp_path / "sweep"
    (out / "runs" / A).mkdir(parents=True)
    (out / "runs" / A / "status.json").write_text('{"status": "complete"}\n')
    (out / "summary.csv").write_text("run_id,status\n")
    with runs.directory_lock(out):  # as a running sweep holds it
        before = files(out)
        done = subprocess.run([*LLCGROK, "sweep", str(params), "--out", str(out)], capture_output=True, text=True,
                              timeout=300)
        assert files(out) == before
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(out) in lines[0] and f"in use by pid {os.getpid()}" in lines[0], lines[0]
