"""The tables of one tiny run of each task kind, hashed: the check that a refactoring
changed no number.

    python benchmarks/identity_tables.py OUT_DIR [CHECKPOINT_BATCH]

trains a modular run (params/quick.yaml, shortened), a fraction_of_x and an addition run,
calibrates each (rule v4, a two-rung ladder) and estimates its LLC trajectory, through the
library calls that every version since rule v4 has, then prints one sha256 per table
(metrics.csv, calibration.csv, llc.csv) with the timing column (``seconds``) dropped. Run it
in two checkouts (``git worktree add ../before REV``; ``PYTHONPATH=../before python
benchmarks/identity_tables.py OUT``) and compare the printed lines. CHECKPOINT_BATCH (a
checkout that has ``llc.checkpoint_batch``) sets how many checkpoints' chains run as one
batched computation.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pandas as pd
import torch

TIMING_COLUMNS = ("seconds",)
TINY_LLC = dict(num_chains=1, num_draws=20, batch_size=64, localizations=[1e4, 1e3], step_fractions=[0.2, 0.1],
                max_burnin_steps=50)
FX = dict(task="fraction_of_x", seq_len=8, alphabet_size=4, n_train=512, n_val=128, num_steps=40, eval_every=10,
          num_checkpoints=4, model={"d_model": 8, "num_heads": 1, "d_ff": 0}, num_threads=1)
ADD = dict(task="addition", n_digits=3, n_train=512, n_val=128, num_steps=40, eval_every=10, num_checkpoints=4,
           model={"d_model": 8, "num_heads": 2, "d_ff": 16, "ffn_rank": 2}, num_threads=1)


def table_hash(path: Path) -> str:
    table = pd.read_csv(path)
    table = table.drop(columns=[c for c in TIMING_COLUMNS if c in table])
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:16]


def _modular(run: Path) -> None:
    from llcgrok.config import load_params, resolve_run
    from llcgrok.sequence_llc import llc_config_from_keywords
    from llcgrok.train import train
    from llcgrok.trajectory import run_trajectory

    cfg = resolve_run(load_params("params/quick.yaml"), {"train.num_steps": 60, "train.num_checkpoints": 4,
                                                         "model.d_model": 32, "train.num_threads": 1})
    train(cfg, run, quiet=True)
    llc = llc_config_from_keywords(**TINY_LLC, nbeta=cfg.llc.nbeta)
    run_trajectory(run, llc, quiet=True)


def _sequence(run: Path, flat: dict) -> None:
    from llcgrok.seqtrain import seq_config, train_sequence
    from llcgrok.sequence_llc import sequence_llc_trajectory

    train_sequence(seq_config(flat), run, quiet=True)
    sequence_llc_trajectory(run, quiet=True, **TINY_LLC)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    for kind, make in (("modular", _modular), ("fraction_of_x", lambda r: _sequence(r, FX)),
                       ("addition", lambda r: _sequence(r, ADD))):
        make(out / kind)
        for name in ("metrics.csv", "calibration.csv", "llc.csv"):
            print(f"{kind:14s} {name:16s} {table_hash(out / kind / name)}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    if len(sys.argv) == 3:
        TINY_LLC["checkpoint_batch"] = int(sys.argv[2])
    main(Path(sys.argv[1]))
