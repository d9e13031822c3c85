"""The run directory: config, metrics table, summary, checkpoints; atomic writes.

Layout of one run directory::

    config.yaml       the resolved RunConfig
    metrics.csv       step, train_loss, train_acc, val_loss, val_acc (tidy, one row per eval)
    summary.json      written last: its presence means training finished
    checkpoints/      step_000100.pt ... (model weights + what rebuilds the model)
    state.pt          optimizer / RNG state of the last checkpoint, for resume
    llc.csv           LLC per checkpoint (written by ``llcgrok llc``)
    llc_traces.npz    the SGLD loss and MALA traces behind every row of llc.csv (TRACES_NPZ)
    fingerprints.csv, fingerprint_probes.json, dmd_eigenvalues.csv   fingerprints and their DMD (llcgrok.dmd)

Every file is written to a temporary name beside its target and renamed, so a file is
either whole or absent, whatever kills the process. A directory holds one training config
(:func:`prepare_run_dir`): another is refused, or replaces the old run whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import yaml

from . import filelock
from .checkpoints import CHECKPOINT_FORMAT, CheckpointError, checkpoint_payload, load_checkpoint  # noqa: F401  (public here)
from .config import ConfigError, RunConfig, dump_yaml, run_config_from_dict

CHECKPOINT_RE = re.compile(r"^step_(\d+)\.pt$")
# Every file of a run directory, named once (config.json: the sequence trainer's; status.json: a sweep's, last).
CONFIG_YAML, CONFIG_JSON, METRICS_CSV, SUMMARY_JSON, STATE_PT = "config.yaml", "config.json", "metrics.csv", "summary.json", "state.pt"
CHECKPOINTS_DIR, FIGURES_DIR, STATUS_JSON, LLC_CSV, TRACES_NPZ = "checkpoints", "figures", "status.json", "llc.csv", "llc_traces.npz"
CALIBRATION_CSV, CALIBRATION_JSON, CURVATURE_CSV = "calibration.csv", "calibration.json", "curvature.csv"
FINGERPRINTS_CSV, PROBES_JSON, DMD_CSV = "fingerprints.csv", "fingerprint_probes.json", "dmd_eigenvalues.csv"
TRACE_FIELDS = ("loss_trace", "mala_trace", "init_loss", "nbeta", "epsilon", "localization", "num_burnin_steps")  # per entry of TRACES_NPZ


class TracesError(RuntimeError):
    """A traces file that cannot be read; the message names the file."""


class LockedError(RuntimeError):
    """Another process holds the output directory."""


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode an ordinary new file gets (mkstemp would make it private, 0600, which
    hides a shared sweep directory from collaborators and cluster workers)."""
    return 0o666 & ~_umask()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13, where mkstemp's mode is moot
            os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic_write_bytes(Path(path), buffer.getvalue())


def _json_default(value: Any):
    if hasattr(value, "item"):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --------------------------------------------------------------------------- checkpoints


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:06d}.pt"


def save_checkpoint(path: str | Path, model: torch.nn.Module, step: int, cfg) -> None:
    """The checkpoint of ``model`` (any registered kind: :mod:`llcgrok.checkpoints`) at
    ``step`` of the run configured by ``cfg`` (a RunConfig or a SeqConfig), written
    atomically; :func:`load_checkpoint` rebuilds it."""
    atomic_torch_save(path, checkpoint_payload(model, step, cfg.to_dict()))


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` sorted by step."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_state(run_dir: str | Path, state: dict) -> None:
    atomic_torch_save(Path(run_dir) / STATE_PT, state)


def load_state(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / STATE_PT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated training state ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- run files


def write_config(run_dir: str | Path, cfg: RunConfig) -> None:
    atomic_write_text(Path(run_dir) / CONFIG_YAML, dump_yaml(cfg.to_dict()))


def read_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_YAML
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.yaml: is {run_dir} a run directory?")
    return run_config_from_dict(yaml.safe_load(path.read_text()), source=str(path))


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / METRICS_CSV)


def read_summary(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / SUMMARY_JSON
    return json.loads(path.read_text()) if path.exists() else None


def is_trained(run_dir: str | Path) -> bool:
    return (Path(run_dir) / SUMMARY_JSON).exists()


# --------------------------------------------------------------------------- one config per run directory
# Checkpoints, metrics, llc.csv, calibration, traces and figures of one config are never read
# as part of another: both trainers (train.py, seqtrain.py) go through prepare_run_dir.

CONFIG_FILES = (CONFIG_YAML, CONFIG_JSON)
# What only a run leaves (a sweep's work directory also holds its notebooks and kernel.log
# before training starts: those alone are not a run).
RUN_MARKERS = ("checkpoints", "state.pt", "metrics.csv", "summary.json", "llc.csv", "calibration.csv", TRACES_NPZ)
_REPLACED = ".replaced-"


class RunDirConflict(ConfigError):
    """The run directory holds another config (or files of a run without its config)."""


def training_identity(cfg: RunConfig) -> dict:
    """What fixes a run's weights: its task, model and train sections. The llc section is
    not part of it: every llc.csv row carries the sampler settings that made it."""
    data = cfg.to_dict()
    return {name: data[name] for name in ("task", "model", "train")}


def _flat(data: Any, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_difference(old: dict, new: dict, limit: int = 4) -> str:
    """``"model.d_model 32 -> 48, train.num_steps 120 -> 80"``: the dotted keys whose values
    differ (empty when none), at most ``limit`` named."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    parts = [f"{k} {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit]]
    return ", ".join(parts) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def prepare_run_dir(run_dir: str | Path, identity: dict, read_identity=lambda d: training_identity(read_config(d)), *,
                    config_file: str = "config.yaml", force: bool = False) -> bool:
    """Make ``run_dir`` the directory of the run whose training config is ``identity``.

    True when it already holds that config (the caller resumes or skips it); False when it
    starts empty. Another config, or run files without ``config_file``, raise
    :class:`RunDirConflict` (one line naming the keys that differ); ``force`` replaces
    whatever run the directory holds (:func:`replace_run_dir`). ``read_identity(run_dir)``
    reads the stored config's identity (the main trainer's by default).
    """
    run_dir = Path(run_dir)
    if force:
        replace_run_dir(run_dir)
        return False
    if (run_dir / config_file).exists():
        changed = config_difference(read_identity(run_dir), identity)
        if not changed:
            return True
        raise RunDirConflict(f"{run_dir} holds a run of another config ({changed}); "
                             "train into another directory, or force (--force) to replace it")
    found = [name for name in (*RUN_MARKERS, *CONFIG_FILES) if (run_dir / name).exists()]
    if found:
        raise RunDirConflict(f"{run_dir} holds run files ({', '.join(found)}) but no {config_file}: another kind of "
                             "run, or a damaged one; train into another directory, or force (--force) to replace it")
    run_dir.mkdir(parents=True, exist_ok=True)
    return False


def replace_run_dir(run_dir: str | Path) -> None:
    """Leave ``run_dir`` empty, with nothing of the run it held. The old directory is first
    renamed aside (one atomic step), then deleted: an interruption leaves the whole old run
    in a hidden sibling, deleted by the next replacement, never a mix of two runs in
    ``run_dir``. A directory that holds no run is refused, so that a mistyped ``--out``
    never deletes a folder of other work."""
    run_dir = Path(run_dir).absolute()  # "." has no name to put a sibling beside
    for leftover in run_dir.parent.glob(f".{run_dir.name}{_REPLACED}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        run_dir.mkdir(parents=True, exist_ok=True)
        return
    if not any((run_dir / name).exists() for name in (*RUN_MARKERS, *CONFIG_FILES)):
        raise RunDirConflict(f"{run_dir} holds no run (no {', '.join(CONFIG_FILES)} or checkpoints): not replacing it")
    aside = run_dir.with_name(f".{run_dir.name}{_REPLACED}{uuid.uuid4().hex[:8]}")
    os.replace(run_dir, aside)
    run_dir.mkdir()
    shutil.rmtree(aside, ignore_errors=True)


# --------------------------------------------------------------------------- SGLD traces
# One npz, members ``step_000100.loss_trace`` etc.: numpy reads it back exactly, no Parquet needed.


def read_trace_arrays(run_dir: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """``{step: {field: array}}`` of a run's stored traces (empty when none were stored)."""
    path = Path(run_dir) / TRACES_NPZ
    if not path.exists():
        return {}
    entries: dict[int, dict[str, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                name, field = key.split(".", 1)
                entries.setdefault(int(name.removeprefix("step_")), {})[field] = archive[key]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise TracesError(f"{path}: corrupt traces file ({type(exc).__name__}); delete it and llc.csv to redo") from None
    return dict(sorted(entries.items()))


def append_traces(run_dir: str | Path, step: int, estimate: Any) -> None:
    """Store ``estimate``'s TRACE_FIELDS (an :class:`~llcgrok.llc.LLCEstimate`'s) as checkpoint
    ``step``, replacing that step's entry (a resume redoes a step whose llc.csv row was lost)
    and keeping the others; the file is rewritten atomically."""
    entries = read_trace_arrays(run_dir)
    entries[int(step)] = {f: np.asarray(getattr(estimate, f)) for f in TRACE_FIELDS if getattr(estimate, f, None) is not None}
    buffer = io.BytesIO()
    np.savez(buffer, **{f"step_{s:06d}.{f}": v for s, fields in sorted(entries.items()) for f, v in fields.items()})
    _atomic_write_bytes(Path(run_dir) / TRACES_NPZ, buffer.getvalue())


def read_traces(run_dir: str | Path, step: int | None = None) -> pd.DataFrame:
    """Stored traces as a tidy table, one row per step x chain x draw: ``step, chain, draw,
    loss, mala`` (NaN where MALA was not recorded) and the estimate's ``init_loss, nbeta,
    epsilon, localization, num_burnin_steps``. ``step`` picks one checkpoint."""
    entries = read_trace_arrays(run_dir)
    if step is not None and int(step) not in entries:
        raise KeyError(f"{Path(run_dir) / TRACES_NPZ}: no traces for step {step} (stored: {sorted(entries) or 'none'})")
    entries = entries if step is None else {int(step): entries[int(step)]}
    frames = []
    for s, fields in entries.items():
        loss, mala = np.atleast_2d(fields["loss_trace"]), fields.get("mala_trace")
        mala = mala if mala is not None and mala.shape == loss.shape else np.full(loss.shape, np.nan)
        chains, draws = loss.shape
        frame = pd.DataFrame({"step": s, "chain": np.repeat(np.arange(chains), draws), "draw": np.tile(np.arange(draws), chains),
                              "loss": loss.reshape(-1), "mala": mala.reshape(-1)})
        for name in TRACE_FIELDS[2:]:
            frame[name] = fields[name].item() if name in fields else np.nan
        frames.append(frame)
    columns = ["step", "chain", "draw", "loss", "mala", *TRACE_FIELDS[2:]]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def directory_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder/.lock`` for the duration, or raise LockedError.

    The lock belongs to an open file (:mod:`llcgrok.filelock`): the operating system drops
    it when the process dies, so a killed sweep never leaves a stale lock behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    handle = open(path, "a+")
    try:
        taken = filelock.lock(handle.fileno(), blocking=False)
    except BaseException:
        handle.close()
        raise
    if not taken:
        holder = "another process"
        with contextlib.suppress(OSError):  # Windows refuses to read a locked byte
            handle.seek(0)
            holder = handle.read().strip() or holder
        handle.close()
        raise LockedError(f"{folder}: in use by {holder}; wait for it to finish or use another --out")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield path
    finally:
        filelock.unlock(handle.fileno())
        handle.close()
