"""Training-dynamics fingerprints: what the network says about a fixed probe set, over time.

With ``train.fingerprint_every = N``, training records at step 0 and every N steps the
log-probability the model gives the correct answer on a fixed set of probes (at most
``train.fingerprint_probes`` validation examples, drawn once without replacement by a
generator of their own), summarised as its 19 quantiles 0.05, 0.10, ..., 0.95. The
sequence of these 19-dimensional snapshots, evenly spaced in steps, is what
:mod:`llcgrok.dmd` decomposes.

Recording leaves training untouched: it draws no number from the training generators, and
evaluates without gradients in eval mode, restoring the mode after. Files in the run
directory::

    fingerprints.csv          step, q05, q10, ..., q95 (one row per recorded step)
    fingerprint_probes.json   the probe indices into the validation split, the steps recorded,
                              the quantile levels and the settings

Both are written with metrics.csv, at every checkpoint, and the recorded rows travel in
``state.pt``: a resumed run continues the sequence from its last checkpoint, with no step
missing or repeated.

Studies over several runs (train them, read their fingerprints and LLCs together) are in
:mod:`llcgrok.fingerprint_study`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import runs
from .runs import FINGERPRINTS_CSV, PROBES_JSON
from .config_sections import RunConfig
from .seeding import PROBES, rng_seed

QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95
QUANTILE_COLUMNS = [f"q{round(q * 100):02d}" for q in QUANTILES]  # q05 ... q95
COLUMNS = ["step", *QUANTILE_COLUMNS]
PROBE_STREAM = PROBES  # the probe draw's own generator (llcgrok.seeding)


def probe_indices(num_val: int, num_probes: int, seed: int) -> torch.Tensor:
    """``min(num_probes, num_val)`` distinct validation indices, sorted, drawn by a
    generator seeded from the run seed alone."""
    generator = torch.Generator().manual_seed(rng_seed(seed, PROBE_STREAM))
    order = torch.randperm(num_val, generator=generator)
    return order[: min(num_probes, num_val)].sort().values


@torch.no_grad()
def log_prob_correct(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(correct answer) per row, in eval mode without gradients (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        logp = F.log_softmax(model(inputs).float(), dim=-1)
        return logp.gather(1, targets[:, None]).squeeze(1)
    finally:
        model.train(was_training)


def fingerprint(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """The 19 quantiles (0.05 ... 0.95) of log p(correct) over ``inputs``."""
    values = log_prob_correct(model, inputs, targets).double().cpu().numpy()
    return np.quantile(values, QUANTILES)


class FingerprintRecorder:
    """Records fingerprints of one run on its fixed probe set; ``train()`` drives it."""

    def __init__(self, cfg: RunConfig, val_inputs: torch.Tensor, val_targets: torch.Tensor):
        tc = cfg.train
        if not tc.fingerprint_every:
            raise ValueError("FingerprintRecorder needs train.fingerprint_every")
        self.every = int(tc.fingerprint_every)
        self.indices = probe_indices(len(val_targets), tc.fingerprint_probes, tc.seed)
        device = val_inputs.device
        self.inputs = val_inputs[self.indices.to(device)]
        self.targets = val_targets[self.indices.to(device)]
        self.requested = tc.fingerprint_probes
        self.rows: list[dict] = []

    def due(self, step: int) -> bool:
        return step % self.every == 0 and (not self.rows or self.rows[-1]["step"] < step)

    def record(self, model: torch.nn.Module, step: int) -> dict:
        row = {"step": int(step), **dict(zip(QUANTILE_COLUMNS, map(float, fingerprint(model, self.inputs, self.targets))))}
        self.rows.append(row)
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def probes_info(self) -> dict:
        return {
            "split": "val",
            "probe_indices": [int(i) for i in self.indices],
            "num_probes": len(self.indices),
            "requested_probes": self.requested,
            "fingerprint_every": self.every,
            "quantiles": list(QUANTILES),
            "statistic": "log p(correct answer)",
            "steps": [row["step"] for row in self.rows],
        }

    def write(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        runs.atomic_write_csv(run_dir / FINGERPRINTS_CSV, self.frame())
        runs.atomic_write_json(run_dir / PROBES_JSON, self.probes_info())


def read_fingerprints(run_dir: str | Path) -> pd.DataFrame:
    """``fingerprints.csv`` of a run (step, q05 ... q95), sorted by step."""
    path = Path(run_dir) / FINGERPRINTS_CSV
    if not path.exists():
        raise FileNotFoundError(f"{path}: no fingerprints; train with train.fingerprint_every set")
    return pd.read_csv(path).sort_values("step").reset_index(drop=True)


def read_probes(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / PROBES_JSON).read_text())
