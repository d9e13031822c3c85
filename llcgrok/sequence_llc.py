"""The sequence notebooks' flat LLC keywords, mapped onto the one run level.

``addition.ipynb`` and ``fraction_of_x.ipynb`` pass the sampler settings as flat keywords
(``epsilon=..., localizations=[...]``). These adapters turn them into an
:class:`~llcgrok.config.LLCConfig`, validated like any params file, and call the same
:func:`~llcgrok.trajectory.calibrate_run` / :func:`~llcgrok.trajectory.run_trajectory` as
every other task: no second implementation of calibration or trajectories.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from .config_sections import LLCConfig
from .config_validation import build_section
from .trajectory import calibrate_run, run_trajectory

# Flat keyword -> dotted key of the llc section (the rest are llc keys of the same name).
_CALIBRATION_KEYS = {
    "epsilons": "epsilons", "nbetas": "nbetas", "localizations": "localizations", "step_fractions": "step_fractions",
    "max_burnin_steps": "max_burnin_steps", "mala_band": "mala_band", "calibration_checkpoints": "checkpoints",
}
_IGNORED = {"calibration_draws"}  # calibration uses the trajectory's draws since rule v4
FLAT_ONLY_KEYWORDS = (*_CALIBRATION_KEYS, *_IGNORED, "strict")  # keywords that an llc section does not have
KNOWN_KEYWORDS = (*(f.name for f in dataclasses.fields(LLCConfig) if f.name != "calibration"), *_CALIBRATION_KEYS, *_IGNORED, "strict")


def llc_section_from_keywords(**keywords) -> dict:
    """The (partial) llc section that flat keywords set (``None`` values: the default)."""
    section: dict = {}
    for key, value in keywords.items():
        if value is None or key in _IGNORED:
            continue
        value = list(value) if isinstance(value, (tuple, list)) else value
        if key in _CALIBRATION_KEYS:
            section.setdefault("calibration", {})[_CALIBRATION_KEYS[key]] = value
        else:
            section[key] = value
    return section


def llc_config_from_keywords(**keywords) -> LLCConfig:
    """An LLCConfig from flat keywords (``None`` values mean the library default)."""
    return build_section(LLCConfig, llc_section_from_keywords(**keywords), "llc", "sequence LLC keywords")


def sequence_llc_trajectory(run_dir, *, strict: bool = False, quiet: bool = True, **keywords) -> pd.DataFrame:
    """The LLC of every checkpoint of a sequence-task run into ``RUN_DIR/llc.csv``
    (:func:`~llcgrok.trajectory.run_trajectory` with the keywords as the llc section)."""
    cfg = llc_config_from_keywords(**keywords)
    return run_trajectory(run_dir, cfg, quiet=quiet, strict=strict)


def calibrate_sequence_run(run_dir, *, quiet: bool = True, force: bool = False, **keywords):
    """:func:`~llcgrok.trajectory.calibrate_run` with the keywords as the llc section."""
    return calibrate_run(run_dir, llc_config_from_keywords(**keywords), quiet=quiet, force=force)


def llc_summary(trajectory: pd.DataFrame) -> dict:
    """LLC at the first checkpoint, at its peak and at the last, with their steps, settings
    and regime."""
    t = trajectory.sort_values("step").dropna(subset=["llc_mean"])
    if t.empty:
        return {}
    peak = t.loc[t["llc_mean"].idxmax()]
    return {
        "llc_start": float(t["llc_mean"].iloc[0]), "llc_start_step": int(t["step"].iloc[0]),
        "llc_peak": float(peak["llc_mean"]), "llc_peak_step": int(peak["step"]),
        "llc_end": float(t["llc_mean"].iloc[-1]), "llc_end_step": int(t["step"].iloc[-1]),
        "epsilon": float(t["epsilon"].iloc[-1]), "nbeta": float(t["nbeta"].iloc[-1]),
        "localization": float(t["localization"].iloc[-1]), "calibrated": bool(t["calibrated"].astype(bool).all()),
        "regime": "llc" if (t["regime"] == "llc").all() else "curvature",
        "healthy_fraction": float(t["healthy"].astype(bool).mean()),
    }
