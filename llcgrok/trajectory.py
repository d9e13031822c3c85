"""The run level: calibrate a run's sampler, then estimate the LLC of every checkpoint.

One ``calibrate_run`` and one ``run_trajectory`` serve every task kind (through
:func:`llcgrok.rundata.open_run`). The rule (:mod:`llcgrok.rule`) is applied at the final
checkpoint and at the checkpoint where tr(H) peaks, the sharpest one; the trajectory then
uses one setting for every checkpoint, so that its values compare: the smaller step and
the smaller localization of the two, with the burn-in that setting needs. The setting is
certified (``regime`` "llc") only when the rule certified it at both checkpoints; each
row's ``trace_ratio`` = llc / (nbeta tr(H) / 2 gamma) is checked too, and a row above
TRACE_RATIO_MAX is "curvature" whatever the calibration said.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import plots, runs
from .runs import CALIBRATION_CSV, CALIBRATION_JSON, LLC_CSV
from .calibrate import Calibration, NoRecommendation, burnin_steps, calibrate
from .curvature import Curvature, curvature_subset, top_eigenvalue, trace_ratio
from .chains import choose_sampler
from .llc import AllChainsFailed, LLCError, estimate_llc, estimate_llc_many
from .loss_data import default_nbeta, make_evaluate
from .rule import RULE, RULE_VERSION, TRACE_RATIO_MAX
from .rundata import RunView, checkpoint_traces, open_run, peak_step
from .sgld_batched import BatchingUnsupported



def estimator_options(llc_cfg) -> dict:
    """The estimate_llc keywords a config sets beyond the sampler settings."""
    options = {}
    for name in ("sampler", "method"):
        if getattr(llc_cfg, name, None) is not None:
            options[name] = getattr(llc_cfg, name)
    return options


def _calibration_settings(llc_cfg, view: RunView, steps: list[int]) -> dict:
    cal = llc_cfg.calibration
    nbeta = default_nbeta(view.num_data) if llc_cfg.nbeta is None else float(llc_cfg.nbeta)
    return {
        "localizations": [float(g) for g in cal.localizations], "step_fractions": [float(c) for c in cal.step_fractions],
        "epsilons": None if cal.epsilons is None else [float(e) for e in cal.epsilons],
        "nbetas": None if cal.nbetas is None else [float(b) for b in cal.nbetas],
        "num_chains": int(llc_cfg.num_chains), "num_draws": int(llc_cfg.num_draws),
        "num_burnin_steps": llc_cfg.num_burnin_steps, "max_burnin_steps": int(cal.max_burnin_steps),
        "batch_size": int(llc_cfg.batch_size), "seed": int(llc_cfg.seed), "mala_band": [float(m) for m in cal.mala_band],
        "nbeta_preferred": round(nbeta, 6), "steps": steps, "rule_version": RULE_VERSION,
        "curvature_probes": int(llc_cfg.curvature_probes), **estimator_options(llc_cfg),
        **({} if llc_cfg.curvature_examples is None else {"curvature_examples": int(llc_cfg.curvature_examples)}),
    }


def load_calibration(run_dir) -> Calibration | None:
    """The calibration stored in a run directory, or None."""
    run_dir = Path(run_dir)
    csv, meta = run_dir / CALIBRATION_CSV, run_dir / CALIBRATION_JSON
    if not (csv.exists() and meta.exists()):
        return None
    info = json.loads(meta.read_text())
    return Calibration(
        table=pd.read_csv(csv), recommended=info.get("recommended"), reason=info.get("reason", ""),
        rule=info.get("rule", RULE), traces=pd.DataFrame(info.get("traces_at_recommended") or {}),
        settings=info.get("settings", {}), step=info.get("step"),
    )


def _calibrate_step(view: RunView, step: int, settings: dict, traces: pd.DataFrame, llc_cfg, quiet: bool) -> Calibration:
    model = view.load(dict(view.checkpoints)[step])
    model.train()
    h_max = top_eigenvalue(model, curvature_subset(view.train, llc_cfg.curvature_examples), make_evaluate(view.loss))
    trace = float(traces.loc[traces["step"] == step, "trace_h"].iloc[0])
    curvature = Curvature(trace, float("nan"), h_max, sum(p.numel() for p in model.parameters()))
    keys = ("localizations", "step_fractions", "epsilons", "nbetas", "num_chains", "num_draws", "num_burnin_steps",
            "max_burnin_steps", "batch_size", "seed", "mala_band", "nbeta_preferred")
    result = calibrate(model, view.train, loss=view.loss, device=str(view.device), cores=llc_cfg.cores,
                       curvature=curvature, chance_loss=view.chance, quiet=quiet,
                       **{k: settings[k] for k in keys}, **estimator_options(llc_cfg))
    result.step = step
    return result


def combine(results: list[Calibration]) -> tuple[dict | None, str]:
    """One setting for the whole trajectory from the calibrations at several checkpoints."""
    why = " | ".join(f"step {r.step}: {r.reason}" for r in results)
    if results[0].recommended is None:  # the final checkpoint, the run's own
        return None, why
    # A checkpoint where the rule found nothing (w* not yet a minimum, say) cannot vote on
    # the setting, and the setting is then not certified for the whole trajectory.
    usable = [r for r in results if r.recommended is not None]
    recs = [r.recommended for r in usable]
    gamma = min(rec["localization"] for rec in recs)
    epsilon = min(rec["epsilon"] for rec in recs)
    certified = len(usable) == len(results) and all(rec["certified"] for rec in recs)
    burnin = max(max(rec["num_burnin_steps"] for rec in recs), 0)
    cap = max(int(r.settings.get("max_burnin_steps") or burnin) for r in usable)
    if results[0].settings.get("num_burnin_steps") is None:
        burnin = max(burnin, burnin_steps(epsilon, gamma, cap=cap))
    recommended = {
        "epsilon": epsilon, "nbeta": recs[0]["nbeta"], "localization": gamma, "num_burnin_steps": int(burnin),
        "certified": certified, "regime": "llc" if certified else "curvature",
        "gamma_slope": max(float(rec["gamma_slope"]) for rec in recs),
        "steps": [int(r.step) for r in usable],
    }
    return recommended, why


def calibrate_run(run_dir, llc_cfg, *, quiet: bool = False, force: bool = False) -> Calibration:
    """Apply the rule at the final checkpoint and at the tr(H) peak; write ``calibration.csv``
    (every point, with its ``step``), ``calibration.json`` and the figures. A stored
    calibration with the same settings is reused unless ``force``. ``run_dir`` may be a
    :class:`RunView` already open (the trajectory's), so the task data is built once."""
    view = run_dir if isinstance(run_dir, RunView) else open_run(run_dir, llc_cfg.device)
    if not runs.is_trained(view.run_dir):
        raise LLCError(f"{view.run_dir}: training has not finished; calibration needs the final checkpoint")
    traces = checkpoint_traces(view, llc_cfg.curvature_probes, examples=llc_cfg.curvature_examples)
    steps = [view.final[0]]
    peak = peak_step(traces)
    if llc_cfg.calibration.checkpoints == "final+peak" and peak is not None and peak not in steps:
        steps.append(peak)
    settings = _calibration_settings(llc_cfg, view, steps)
    stored = None if force else load_calibration(view.run_dir)
    if stored is not None and {k: stored.settings.get(k) for k in settings} == settings:
        return stored
    results = [_calibrate_step(view, step, settings, traces, llc_cfg, quiet) for step in steps]
    recommended, reason = combine(results)
    table = pd.concat([r.table.assign(step=r.step) for r in results], ignore_index=True)
    chosen = results[0]
    result = Calibration(table=table, recommended=recommended, reason=reason, traces=chosen.traces,
                         settings={**settings, **{f"h_max_step_{r.step}": r.settings["h_max"] for r in results}},
                         step=view.final[0])
    runs.atomic_write_csv(view.run_dir / CALIBRATION_CSV, table)
    runs.atomic_write_json(view.run_dir / CALIBRATION_JSON, result.to_json())
    _calibration_figures(view, result)
    return result


def _calibration_figures(view: RunView, result: Calibration) -> None:
    """The ladder of every calibrated checkpoint, and the epsilon x nbeta grid of the final
    one at the chosen localization (or at its smallest, without a recommendation)."""
    figures = view.run_dir / "figures"
    ladder = result.table[~result.table["relaxation_check"].astype(bool)]  # the re-run of a chosen point is not a rung
    plots.save_figure(plots.plot_calibration_ladder(ladder, result.recommended), figures / "calibration_ladder.png")
    final = ladder[ladder["step"] == result.step]
    gamma = result.recommended["localization"] if result.recommended else final["localization"].min()
    at_gamma = final[np.isclose(final["localization"], gamma)]
    plots.save_figure(plots.plot_calibration_heatmap(at_gamma if len(at_gamma) else final, result.recommended),
                      figures / "calibration_heatmap.png")
    if result.recommended is not None and not result.traces_at_recommended.empty:
        fig = plots.plot_loss_traces(result.traces_at_recommended, title=f"{view.run_dir.name} step {result.step}: loss traces at the recommended point")
        plots.save_figure(fig, figures / "calibration_traces.png")


# --------------------------------------------------------------------------- the trajectory

SETTING_KEYS = ("epsilon", "nbeta", "localization", "num_chains", "num_draws", "num_burnin_steps", "batch_size", "seed")


def settings_from_config(llc_cfg, num_data: int) -> dict:
    """Sampler settings of an :class:`~llcgrok.config.LLCConfig`, nbeta and burn-in resolved."""
    epsilon, gamma = float(llc_cfg.epsilon), float(llc_cfg.localization)
    burnin = llc_cfg.num_burnin_steps
    if burnin is None:
        burnin = burnin_steps(epsilon, gamma, cap=llc_cfg.calibration.max_burnin_steps)
    return {
        "epsilon": epsilon, "nbeta": default_nbeta(num_data) if llc_cfg.nbeta is None else float(llc_cfg.nbeta),
        "localization": gamma, "num_chains": int(llc_cfg.num_chains), "num_draws": int(llc_cfg.num_draws),
        "num_burnin_steps": int(burnin), "batch_size": int(llc_cfg.batch_size), "seed": int(llc_cfg.seed),
    }


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def apply_calibration(calibration: Calibration, settings: dict, run_dir, *, strict: bool, widen_hint: str) -> tuple[dict, dict]:
    """The settings a trajectory runs with after ``calibration``, and what every row records
    about where they came from (``settings_source``, ``calibrated``, ``certified``,
    ``gamma_slope``). Without a recommendation: ``settings`` unchanged with a loud warning
    and ``settings_source`` starting with ``UNCALIBRATED`` (``strict`` raises instead)."""
    rec = calibration.recommended
    if rec is None:
        message = f"{run_dir}: calibration found no healthy setting ({calibration.reason})."
        if strict:
            raise NoRecommendation(f"{message} {widen_hint}")
        warnings.warn(f"{message} Estimating with the given settings ({_describe(settings)}); every row of llc.csv "
                      f"says UNCALIBRATED in settings_source and regime curvature. {widen_hint}", stacklevel=3)
        return settings, {"settings_source": f"UNCALIBRATED: calibration at step {calibration.step} recommended nothing; given settings used",
                          "calibrated": False, "certified": False, "gamma_slope": float("nan")}
    settings = {**settings, "epsilon": float(rec["epsilon"]), "nbeta": float(rec["nbeta"]),
                "localization": float(rec.get("localization", settings["localization"]))}
    if rec.get("num_burnin_steps") is not None:
        settings["num_burnin_steps"] = int(rec["num_burnin_steps"])
    steps = rec.get("steps") or [calibration.step]
    return settings, {"settings_source": f"calibrated at step{'s' if len(steps) > 1 else ''} {', '.join(str(s) for s in steps)}",
                      "calibrated": True, "certified": bool(rec.get("certified", False)),
                      "gamma_slope": float(rec.get("gamma_slope", float("nan")))}


def _same_settings(row, settings: dict) -> bool:
    for key, value in settings.items():
        if key not in row or pd.isna(row[key]) or not math.isclose(float(row[key]), float(value), rel_tol=1e-9):
            return False
    return True


def rows_done(path: Path, settings: dict) -> list[dict]:
    """The rows of an existing trajectory file, to resume from; an error if any was made
    with other sampler settings (a trajectory mixes no settings)."""
    if not path.exists():
        return []
    done = pd.read_csv(path)
    if any(not _same_settings(r, settings) for _, r in done.iterrows()):
        first = done.iloc[0]
        recorded = {k: first[k] for k in settings if k in first}
        raise LLCError(f"{path} holds estimates made with other sampler settings ({_describe(recorded)}) than "
                       f"now ({_describe(settings)}); move it away to start a new trajectory")
    return done.to_dict("records")


def failed_row(exc, settings: dict) -> dict:
    """The trajectory row of a checkpoint where every chain failed: NaN LLC, the reasons."""
    return {"llc_mean": float("nan"), "llc_std": float("nan"), "healthy": False, "num_diverged": settings["num_chains"],
            "failure_reasons": "; ".join(exc.reasons), "warnings": "every chain failed", **settings}


TRAJECTORY_COLUMNS = [
    "step", "llc_mean", "llc_std", "regime", "healthy", "trace_ratio", "trace_h", "gamma_slope", "mala_acceptance",
    "frac_below_init", "num_diverged", "diverged_chains", "escaped_chains", "trace_drift", "trace_drift_se", "trace_slope",
    "converged", "r_hat", "loss_excess", "escaped", "chance_loss", "negative", "init_loss", "failure_reasons", "warnings",
    *SETTING_KEYS, "sampler", "method", "settings_source", "calibrated", "certified", "train_loss", "val_loss",
]


def trajectory_frame(rows: list[dict], columns: list[str] = TRAJECTORY_COLUMNS) -> pd.DataFrame:
    """Trajectory rows as a table: ``columns`` first (NaN where a row lacks one), then any
    others, sorted by step."""
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame:
            frame[column] = np.nan
    extra = [c for c in frame.columns if c not in columns]
    return frame[columns + extra].sort_values("step", kind="stable").reset_index(drop=True)


def regime_of(row: dict, trace_h: float, certified: bool) -> tuple[str, float]:
    """("llc" or "curvature", trace_ratio) of one estimate: "llc" only for a healthy estimate
    at a certified setting that is not localization-dominated (trace_ratio <= TRACE_RATIO_MAX).
    An unhealthy one (a negative value, a drifting trace) is not certified by its setting."""
    gamma, llc = float(row["localization"]), float(row.get("llc_mean", float("nan")))
    ratio = trace_ratio(llc, trace_h, float(row["nbeta"]), gamma)
    healthy = bool(row.get("healthy", False))
    ok = certified and healthy and math.isfinite(llc) and (not math.isfinite(ratio) or ratio <= TRACE_RATIO_MAX)
    return ("llc" if ok else "curvature"), float(ratio)


def _trajectory_settings(view: RunView, llc_cfg, calibrate_first: bool, quiet: bool, strict: bool) -> tuple[dict, dict]:
    settings = settings_from_config(llc_cfg, view.num_data)
    if not calibrate_first:
        return settings, {"settings_source": "config", "calibrated": False, "certified": False, "gamma_slope": float("nan")}
    if not runs.is_trained(view.run_dir):
        raise LLCError(f"{view.run_dir}: training has not finished; calibration needs the final checkpoint")
    calibration = calibrate_run(view, llc_cfg, quiet=quiet)
    return apply_calibration(calibration, settings, view.run_dir, strict=strict,
                             widen_hint="Widen llc.calibration (localizations, step_fractions), or run uncalibrated with --no-calibrate.")


def _estimates(view: RunView, models: list, settings: dict, llc_cfg) -> list:
    """One LLCEstimate (or the AllChainsFailed it raised) per model: every model's chains as
    one batched computation when more than one is given and the batched path runs them."""
    options = estimator_options(llc_cfg)
    batched = choose_sampler(options.get("sampler", "auto"), view.device) == "batched"
    if len(models) > 1 and batched and int(llc_cfg.cores) == 1:
        try:
            return estimate_llc_many(models, view.train, loss=view.loss, **settings, device=str(view.device),
                                     chance_loss=view.chance, method=options.get("method", "sgld"))
        except BatchingUnsupported:
            pass  # one at a time: estimate_llc falls back to devinterp's loop, and says so
    out = []
    for model in models:
        try:
            out.append(estimate_llc(model, view.train, loss=view.loss, **settings, device=str(view.device),
                                    cores=llc_cfg.cores, chance_loss=view.chance, quiet=True, **options))
        except AllChainsFailed as exc:
            out.append(exc)
    return out


def _row_of(result, settings: dict, provenance: dict, trace_h: float) -> tuple[dict, object]:
    est, row = (None, failed_row(result, settings)) if isinstance(result, AllChainsFailed) else (result, result.to_row())
    regime, ratio = regime_of({**settings, **row}, trace_h, provenance["certified"])
    row.update(provenance, regime=regime, trace_ratio=ratio, trace_h=trace_h)
    return row, est


def run_trajectory(run_dir, llc_cfg, *, calibrate: bool | None = None, quiet: bool = False, strict: bool = False) -> pd.DataFrame:
    """Estimate the LLC of every checkpoint of a run (any task kind); write and return ``RUN_DIR/llc.csv``.

    One row per checkpoint: the LLC, its ``regime`` and ``trace_ratio``, the diagnostics, the
    sampler settings and where they came from, and the task's train/val metrics at that
    checkpoint. Rows are appended (atomically) as each checkpoint finishes, with its draws
    in the traces file; a rerun skips the steps already in the file.

    ``calibrate`` (None: ``llc_cfg.calibrate``): first :func:`calibrate_run` (reusing a
    stored calibration when it matches) and use its setting for every checkpoint. When it
    recommends nothing, the configured settings are used with a loud warning and every
    row's ``settings_source`` starts with ``UNCALIBRATED``; ``strict=True`` raises
    :class:`~llcgrok.calibrate.NoRecommendation` instead.
    """
    view = open_run(run_dir, llc_cfg.device)
    calibrate_first = llc_cfg.calibrate if calibrate is None else calibrate
    settings, provenance = _trajectory_settings(view, llc_cfg, calibrate_first, quiet, strict)
    traces = checkpoint_traces(view, llc_cfg.curvature_probes, examples=llc_cfg.curvature_examples).set_index("step")["trace_h"]
    path = view.run_dir / LLC_CSV
    rows = rows_done(path, settings)
    done = {int(r["step"]) for r in rows}
    todo = [(step, p) for step, p in view.checkpoints if step not in done]
    group = max(1, int(getattr(llc_cfg, "checkpoint_batch", 1)))
    bar = tqdm(total=len(todo), desc=f"LLC {view.run_dir.name}", unit="ckpt", disable=quiet)
    for first in range(0, len(todo), group):
        chunk = todo[first:first + group]
        models = [view.load(ckpt) for _, ckpt in chunk]
        t0 = time.perf_counter()
        results = _estimates(view, models, settings, llc_cfg)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for (step, _), model, result in zip(chunk, models, results):
            row, est = _row_of(result, settings, provenance, float(traces.get(step, float("nan"))))
            if est is not None:
                runs.append_traces(view.run_dir, step, est)  # before the row: no row of llc.csv lacks its traces
            row.update(step=step, seconds=seconds, num_params=sum(p.numel() for p in model.parameters()), **view.metrics(model))
            rows.append(row)
            runs.atomic_write_csv(path, trajectory_frame(rows))
            bar.update(1)
            bar.set_postfix(step=step, llc=f"{row['llc_mean']:.3g}", regime=row["regime"], refresh=False)
    bar.close()
    frame = trajectory_frame(rows)
    if not path.exists():
        runs.atomic_write_csv(path, frame)
    return frame
