"""Dynamic mode decomposition (DMD) of a fingerprint sequence, on a time-delay embedding.

The fingerprints of a run (:mod:`llcgrok.fingerprints`) are snapshots x_0 ... x_{T-1}
(19 quantiles each), evenly spaced in training steps. DMD fits the linear map that best
advances the sequence by one snapshot, and its eigenvalues say how training moves: an
eigenvalue's modulus is the factor a mode grows (> 1) or decays (< 1) by per snapshot, its
angle the rotation per snapshot (an oscillation); modes near 1 are the slow directions.

Three steps:

1. centring: ``"snapshot"`` subtracts each snapshot's mean over its 19 quantiles (the shape
   of the distribution stays, its overall level goes; a linear transform of the state, so
   linear dynamics keep their eigenvalues), ``"t0"`` subtracts the first snapshot (motion
   relative to the start; a constant offset adds an eigenvalue at 1), ``"none"`` keeps
   the values;
2. a Hankel (time-delay) embedding: column j stacks ``x_j ... x_{j+d-1}`` for
   ``d = n_delays``, so that a state hidden from 19 numbers at one time becomes visible in
   ``19 d`` numbers over ``d`` times;
3. exact DMD (Tu et al. 2014) of the embedded sequence, truncated to rank ``k``: with
   X = [h_0 ... h_{m-2}], Y = [h_1 ... h_{m-1}] and the rank-k SVD X = U S V*, the
   eigenvalues are those of ``U* Y V S^-1``, the modes ``Y V S^-1 W``, the amplitudes the
   least-squares fit of the modes to the first column.

Why a few lines of numpy and not pydmd: pydmd (2025.8.1) would add scipy, scikit-learn,
xarray and h5netcdf (with h5py and HDF5) to the dependencies of a package that needs none
of them, for what is here one SVD, one small eigendecomposition and one least-squares
solve. Its Hankel-DMD wrapper hides the delay-embedded matrices behind a reconstruction
API, so the centring variants, the rank actually used and the singular values (to choose
the rank by) would be taken from its internals, whose names have changed across releases.
Written out, every number is checkable against the equations above; tests/test_dmd.py
recovers the eigenvalues of a known linear system to 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from . import runs

DMD_CSV = runs.DMD_CSV
CENTRINGS = ("snapshot", "t0", "none")


@dataclass
class DMDResult:
    """One decomposition. Eigenvalues are sorted by modulus, largest first (conjugate pairs:
    positive imaginary part first); ``modes[:, i]`` and ``amplitudes[i]`` belong to
    ``eigenvalues[i]``."""

    eigenvalues: np.ndarray  # (r,) complex, per snapshot
    modes: np.ndarray  # (n_features * n_delays, r) complex, exact DMD modes
    amplitudes: np.ndarray  # (r,) complex
    singular_values: np.ndarray  # every singular value of the embedded X, to choose the rank by
    rank: int  # the rank used: min(requested, numerical rank, number of snapshot pairs)
    n_delays: int
    centring: str
    dt: float = 1.0  # training steps between snapshots

    def to_frame(self) -> pd.DataFrame:
        """One row per eigenvalue: ``real, imag, modulus, angle`` (radians per snapshot),
        ``amplitude`` (|b|), ``growth_rate`` (ln|lambda| / dt, per step) and ``frequency``
        (angle / dt, radians per step), with the settings."""
        lam = self.eigenvalues
        with np.errstate(divide="ignore"):
            growth = np.log(np.abs(lam)) / self.dt
        return pd.DataFrame(
            {
                "mode": np.arange(len(lam)),
                "real": lam.real,
                "imag": lam.imag,
                "modulus": np.abs(lam),
                "angle": np.angle(lam),
                "amplitude": np.abs(self.amplitudes),
                "growth_rate": growth,
                "frequency": np.angle(lam) / self.dt,
                "n_delays": self.n_delays,
                "rank": self.rank,
                "centring": self.centring,
                "dt": self.dt,
            }
        )


def centre(snapshots: np.ndarray, centring: str = "snapshot") -> np.ndarray:
    """``snapshots`` (T, n) centred as described in the module docstring."""
    x = np.asarray(snapshots, dtype=float)
    if centring == "snapshot":
        return x - x.mean(axis=1, keepdims=True)
    if centring == "t0":
        return x - x[:1]
    if centring == "none":
        return x.copy()
    raise ValueError(f"centring must be one of {', '.join(CENTRINGS)}, got {centring!r}")


def hankel(snapshots: np.ndarray, n_delays: int) -> np.ndarray:
    """The (n * n_delays, T - n_delays + 1) delay embedding of ``snapshots`` (T, n):
    column j is ``x_j, x_{j+1}, ..., x_{j+n_delays-1}`` stacked."""
    x = np.asarray(snapshots, dtype=float)
    t = len(x)
    m = t - n_delays + 1
    return np.concatenate([x[i : i + m].T for i in range(n_delays)], axis=0)


def min_snapshots(n_delays: int) -> int:
    """The fewest snapshots DMD with ``n_delays`` delays can use: two embedded columns."""
    return n_delays + 1


def dmd(
    snapshots: np.ndarray,
    n_delays: int = 32,
    rank: int = 10,
    centring: str = "snapshot",
    dt: float = 1.0,
) -> DMDResult:
    """Exact DMD of the delay-embedded ``snapshots`` (T rows in time order, n features).

    Raises ValueError when T is too short for ``n_delays`` (fewer than ``n_delays + 1``
    snapshots), for a bad ``centring``, non-positive ``n_delays``/``rank`` or non-finite
    values. The rank used is at most ``rank``, the numerical rank of the embedded data and
    the number of snapshot pairs (``result.rank`` says which).
    """
    x = np.asarray(snapshots, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"DMD needs a (time, features) array, got shape {x.shape}")
    if int(n_delays) != n_delays or n_delays < 1:
        raise ValueError(f"n_delays must be a positive integer, got {n_delays!r}")
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    n_delays, rank = int(n_delays), int(rank)
    if len(x) < min_snapshots(n_delays):
        raise ValueError(
            f"DMD with n_delays={n_delays} needs at least {min_snapshots(n_delays)} snapshots, got {len(x)}: "
            "record fingerprints more often, train longer or use fewer delays"
        )
    if not np.isfinite(x).all():
        raise ValueError("DMD: the snapshots contain NaN or infinite values")
    h = hankel(centre(x, centring), n_delays)
    before, after = h[:, :-1], h[:, 1:]
    u, s, vh = np.linalg.svd(before, full_matrices=False)
    tol = s[0] * max(before.shape) * np.finfo(float).eps if s.size and s[0] > 0 else 0.0
    r = min(rank, int(np.sum(s > tol)))
    if r == 0:
        raise ValueError("DMD: the centred snapshots are all zero (nothing moves)")
    u_r, s_r, v_r = u[:, :r], s[:r], vh[:r].conj().T
    projected = after @ v_r / s_r  # Y V S^-1
    a_tilde = u_r.conj().T @ projected
    eigenvalues, w = np.linalg.eig(a_tilde)
    modes = projected @ w
    amplitudes = np.linalg.lstsq(modes, before[:, 0].astype(complex), rcond=None)[0]
    order = np.lexsort((-eigenvalues.imag, -np.abs(eigenvalues)))
    return DMDResult(
        eigenvalues=eigenvalues[order],
        modes=modes[:, order],
        amplitudes=amplitudes[order],
        singular_values=s,
        rank=r,
        n_delays=n_delays,
        centring=centring,
        dt=float(dt),
    )


def dmd_of_run(
    run_dir: str | Path,
    n_delays: int = 32,
    rank: int = 10,
    centring: str = "snapshot",
    step_range: tuple[int, int] | None = None,
    write: bool = True,
) -> pd.DataFrame:
    """DMD of a run's ``fingerprints.csv``; writes ``RUN_DIR/dmd_eigenvalues.csv`` (with
    ``write``) and returns that table: one row per eigenvalue (see
    :meth:`DMDResult.to_frame`), plus the requested rank, first/last step and number of
    snapshots. ``step_range`` (first, last; inclusive) restricts the sequence, e.g. to
    before grokking."""
    from .fingerprints import QUANTILE_COLUMNS, read_fingerprints  # lazy: torch; dmd() itself needs numpy only

    run_dir = Path(run_dir)
    table = read_fingerprints(run_dir)
    if step_range is not None:
        first, last = step_range
        table = table[(table["step"] >= first) & (table["step"] <= last)]
    steps = table["step"].to_numpy()
    gaps = np.unique(np.diff(steps))
    if len(gaps) > 1:
        raise ValueError(f"{run_dir}: fingerprint steps are not evenly spaced (gaps {gaps.tolist()})")
    dt = float(gaps[0]) if len(gaps) else 1.0
    try:
        result = dmd(table[QUANTILE_COLUMNS].to_numpy(), n_delays=n_delays, rank=rank, centring=centring, dt=dt)
    except ValueError as exc:
        raise ValueError(f"{run_dir}: {exc}") from None
    frame = result.to_frame().rename(columns={"rank": "effective_rank"})
    frame.insert(frame.columns.get_loc("effective_rank"), "rank", rank)
    frame["first_step"] = int(steps[0])
    frame["last_step"] = int(steps[-1])
    frame["num_snapshots"] = len(steps)
    if write:
        runs.atomic_write_csv(run_dir / DMD_CSV, frame)
    return frame


def study_spectra(
    run_dirs: Iterable[str | Path],
    n_delays: int = 32,
    rank: int = 10,
    centring: str = "snapshot",
    keys: Iterable[str] = ("train.weight_decay",),
    step_range: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """:func:`dmd_of_run` on every run (each writes its ``dmd_eigenvalues.csv``), in one
    table whose rows carry the run's labels (:func:`llcgrok.fingerprint_study.run_info`)."""
    from .fingerprint_study import run_info  # lazy: torch; dmd() itself needs numpy only

    keys = list(keys)
    frames = [
        dmd_of_run(d, n_delays=n_delays, rank=rank, centring=centring, step_range=step_range).assign(**run_info(d, keys))
        for d in run_dirs
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def leading_moduli(spectra: pd.DataFrame, by: str = "weight_decay", top: int = 3) -> pd.DataFrame:
    """Per run, the ``top`` largest eigenvalue moduli (columns ``modulus_1`` ...; one
    eigenvalue per conjugate pair), labelled by ``by`` and seed, sorted: the numbers to
    compare spectra by."""
    rows = []
    for run_id, part in spectra.groupby("run_id", sort=False):
        upper = part[part["imag"] >= 0]
        moduli = upper["modulus"].sort_values(ascending=False).to_numpy()[:top]
        row = {"run_id": run_id, by: part[by].iloc[0], "seed": part["seed"].iloc[0]}
        row.update({f"modulus_{i + 1}": float(m) for i, m in enumerate(moduli)})
        rows.append(row)
    return pd.DataFrame(rows).sort_values([by, "seed"]).reset_index(drop=True)
