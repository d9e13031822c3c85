"""The run directory: config, metrics table, summary, checkpoints; atomic writes.

Layout of one run directory::

    config.yaml       the resolved RunConfig
    metrics.csv       step, train_loss, train_acc, val_loss, val_acc (tidy, one row per eval)
    summary.json      written last: its presence means training finished
    checkpoints/      step_000100.pt ... (model weights + what rebuilds the model)
    state.pt          optimizer / RNG state of the last checkpoint, for resume
    llc.csv           LLC per checkpoint (written by ``llcgrok llc``)
    fingerprints.csv, fingerprint_probes.json   with train.fingerprint_every (llcgrok.fingerprints)
    dmd_eigenvalues.csv                         DMD spectrum of the fingerprints (llcgrok.dmd)

Every file is written to a temporary name beside its target and renamed, so a file is
either whole or absent, whatever kills the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
import yaml

from .config import ModelConfig, RunConfig, dump_yaml, run_config_from_dict
from .model import GrokTransformer, build_model

CHECKPOINT_FORMAT = "llcgrok-checkpoint-v1"
CHECKPOINT_RE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read; the message names the file."""


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
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}.pt"


def save_checkpoint(path: str | Path, model: GrokTransformer, step: int, cfg: RunConfig) -> None:
    atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "model_config": dataclasses.asdict(model.cfg),
            "model_kwargs": model.init_kwargs(),
            "run_config": cfg.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
    )


def _torch_load(path: Path, device: str | torch.device = "cpu") -> Any:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except Exception as exc:  # torch raises several types for damaged zip archives
        # Only the type: torch's messages span lines and may advise weights_only=False.
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GrokTransformer, dict]:
    """Rebuild the model stored at ``path``. Returns ``(model, info)``; ``info`` holds
    ``step`` and ``run_config`` (a dict). Needs no params file."""
    path = Path(path)
    blob = _torch_load(path, device)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an llcgrok checkpoint")
    model = build_model(ModelConfig(**blob["model_config"]), **blob["model_kwargs"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored model config ({exc})") from None
    model.to(device)
    return model, {"step": int(blob["step"]), "run_config": blob["run_config"]}


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` sorted by step."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_state(run_dir: str | Path, state: dict) -> None:
    atomic_torch_save(Path(run_dir) / "state.pt", state)


def load_state(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / "state.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated training state ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- run files


def write_config(run_dir: str | Path, cfg: RunConfig) -> None:
    atomic_write_text(Path(run_dir) / "config.yaml", dump_yaml(cfg.to_dict()))


def read_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.yaml: is {run_dir} a run directory?")
    return run_config_from_dict(yaml.safe_load(path.read_text()), source=str(path))


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "metrics.csv")


def read_summary(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def same_training(a: RunConfig, b: RunConfig) -> bool:
    """Whether two configs train the same weights (their llc sections may differ)."""
    return (a.task, a.model, a.train) == (b.task, b.model, b.train)


def is_trained(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "summary.json").exists()


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def directory_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder/.lock`` for the duration, or raise LockedError.

    The lock is an ``flock`` on an open file: the kernel drops it when the process dies,
    so a killed sweep never leaves a stale lock behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise LockedError(f"{folder}: in use by {holder}; wait for it to finish or use another --out") from None
        raise
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield path
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
