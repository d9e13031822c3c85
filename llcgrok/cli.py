"""The ``llcgrok`` command.

Exit codes: 0 success; 1 a run failed (divergence, damaged checkpoint, failed configs in
a sweep); 2 bad input (params file, options); 3 the output directory is in use.
A user's mistake prints one line, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from .config import is_sequence, load_params, params_from_sections, parse_overrides, read_sections, resolve_run
from .config_sections import ConfigError
from .config_validation import set_dotted, validate_run

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_LOCKED = 1, 2, 3


def _overrides(pairs: list[str] | None) -> dict:
    return parse_overrides(pairs or [])


def _add_set(parser: argparse.ArgumentParser, example: str = "model.d_model=64", scope: str = "") -> None:
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[],
        help=f"override one config value by dotted key{scope}, e.g. --set {example} (repeatable)",
    )


def cmd_train(args) -> int:
    # Validate before importing torch: a mistake in the params file is reported at once.
    sections = read_sections(args.params)
    if is_sequence(sections):
        return _train_sequence(args, sections)
    cfg = resolve_run(params_from_sections(**sections, source=str(args.params)), _overrides(args.set), seed=args.seed)
    from . import runs  # lazy: torch; options and params are checked first
    from .train import train  # lazy: torch; options and params are checked first

    out = Path(args.out)
    # Another config in --out stops here (exit 2); the same one, finished, is skipped.
    if not args.force and runs.prepare_run_dir(out, runs.training_identity(cfg)) and runs.is_trained(out):
        print(f"{out}: already trained with this config (summary.json exists); --force retrains", file=sys.stderr)
        return 0
    result = train(cfg, out, quiet=args.quiet, force=args.force)
    s = result.summary
    print(
        f"{cfg.run_id}: {s['num_params']} params, memorized at {s['steps_to_memorization']}, "
        f"grokked at {s['steps_to_grokking']}, final val acc {s['final_val_acc']:.4f}, "
        f"{s['ms_per_step']:.2f} ms/step -> {out}"
    )
    return 0


def _train_sequence(args, sections: dict) -> int:
    """``llcgrok train`` on an addition or fraction_of_x params file (llcgrok.seqparams)."""
    from . import runs, seqtrain  # lazy: torch; options and params are checked first
    from .seqparams import resolve_seq_run, seq_params_from_sections  # lazy: torch; options and params are checked first

    params = seq_params_from_sections(**sections, source=str(args.params))
    cfg = resolve_seq_run(params, _overrides(args.set), seed=args.seed)
    out = Path(args.out)
    if not args.force and seqtrain.prepare_seq_run_dir(out, cfg) and runs.is_trained(out):
        print(f"{out}: already trained with this config (summary.json exists); --force retrains", file=sys.stderr)
        return 0
    s = seqtrain.train_sequence(cfg, out, quiet=args.quiet, force=args.force, llc=dataclasses.asdict(params.llc)).summary
    if cfg.task == "addition":
        outcome = (f"val exact match {s['final_val_exact_match']:.4f} (best {s['best_val_exact_match']:.4f}, "
                   f"0.99 first at {s['steps_to_exact_match_0.99']}), val digit acc {s['final_val_digit_acc']:.4f}")
    else:
        outcome = f"val MAE {s['final_val_mae']:.4f} (predict-the-mean {s['baseline_val_mae']:.4f})"
    print(f"{cfg.run_id}: {s['num_params']} params, {outcome}, {s['ms_per_step']:.2f} ms/step -> {out}")
    return 0


def cmd_grid(args) -> int:
    from .capacity import find_pairs, grid_table  # lazy: torch; options and params are checked first

    params = load_params(args.params)
    table = grid_table(params)
    pairs = find_pairs(table)
    out = Path(args.out) if args.out else Path("outputs") / f"{Path(args.params).stem}-grid.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(table.to_string(index=False))
    print(f"\n{len(table)} architectures; buckets: " + ", ".join(f"{b} {n}" for b, n in table["bucket"].value_counts().sort_index().items()))
    if len(pairs):
        print("\ndeep-narrow vs wide-shallow pairs:")
        print(pairs.to_string(index=False))
    print(f"\nwrote {out}")
    return 0


def _llc_config(run_dir: Path, overrides: dict):
    """The run's own llc section (from its config) with the ``llc.*`` overrides on top."""
    from . import runs  # lazy: torch; options and params are checked first

    if (run_dir / "config.json").exists():  # a sequence-task run (llcgrok.seqtrain)
        from .seqparams import llc_with_overrides  # lazy: torch; options and params are checked first
        from .seqconfig import read_seq_llc  # lazy: torch; options and params are checked first

        return llc_with_overrides(read_seq_llc(run_dir), overrides, "--set")
    cfg = runs.read_config(run_dir)
    for key, value in overrides.items():
        if not key.startswith("llc."):
            raise ConfigError(f"--set: only llc.* keys apply here, got '{key}'")
        set_dotted(cfg, key, value, "--set")
    return validate_run(cfg, "--set").llc


def cmd_llc(args) -> int:
    from .trajectory import run_trajectory  # lazy: torch; options and params are checked first

    run_dir = Path(args.run_dir)
    llc_cfg = _llc_config(run_dir, _overrides(args.set))
    table = run_trajectory(run_dir, llc_cfg, calibrate=args.calibrate, quiet=args.quiet)
    regimes = table["regime"].fillna("curvature").value_counts().to_dict() if "regime" in table else {}
    label = ", ".join(f"{n} {r}" for r, n in sorted(regimes.items()))
    print(f"{run_dir}: {len(table)} checkpoints estimated ({label or 'no regime recorded'}) -> {run_dir / 'llc.csv'}")
    return 0


def cmd_calibrate(args) -> int:
    from .trajectory import calibrate_run  # lazy: torch; options and params are checked first

    run_dir = Path(args.run_dir)
    result = calibrate_run(run_dir, _llc_config(run_dir, _overrides(args.set)), quiet=args.quiet)
    if result.recommended is None:
        print(f"{run_dir}: no sampler setting qualified: {result.reason}")
        return EXIT_FAILED
    rec = result.recommended
    print(f"{run_dir}: recommended epsilon={rec['epsilon']:g} nbeta={rec['nbeta']:g} localization={rec.get('localization')} "
          f"(regime {rec.get('regime', 'curvature')}) -> {run_dir / 'calibration.csv'}")
    return 0


def available_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-limited sets included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _sweep_params(path):
    """The study's params: a sequence-task file (llcgrok.seqparams) or a modular one."""
    sections = read_sections(path)
    if is_sequence(sections):
        from .seqparams import seq_params_from_sections  # lazy: torch; options and params are checked first

        return seq_params_from_sections(**sections, source=str(path))
    return params_from_sections(**sections, source=str(path))


def cmd_sweep(args) -> int:
    params = _sweep_params(args.params)  # before the heavy imports, as in cmd_train
    from .sweep import run_sweep  # lazy: torch; options and params are checked first

    overrides = _overrides(args.set)
    if args.scheduler and args.cluster:
        raise ConfigError("--scheduler and --cluster exclude each other")
    result = run_sweep(
        params,
        Path(args.out),
        workers=args.workers if args.workers is not None else available_cpus(),
        scheduler=args.scheduler,
        cluster=args.cluster,
        overrides=overrides,
        quiet=args.quiet,
        report=not args.no_report,
        figure_formats=args.figure_formats,
    )
    return EXIT_FAILED if result.failed else 0


def cmd_report(args) -> int:
    from .sweep import write_report  # lazy: torch; options and params are checked first

    write_report(Path(args.sweep_dir), quiet=args.quiet, formats=args.figure_formats)
    return 0


def _add_figure_formats(p) -> None:
    p.add_argument("--figure-formats", default=None, metavar="png,pdf,svg",
                   type=lambda text: [f for f in text.split(",") if f.strip()],
                   help="the report's figures in each of these formats (default png), each beside a CSV of its data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llcgrok", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one config into a run directory")
    p.add_argument("params", help="params YAML: its sections are the run; a grid axis gives its first value "
                                  "only to a key the sections leave out")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--force", action="store_true",
                   help="replace what --out holds (a finished run, or a run of another config) with a new run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_set(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("grid", help="print the architecture grid, buckets and pairs; write it as CSV")
    p.add_argument("params")
    p.add_argument("--out", default=None, help="CSV path (default outputs/<params>-grid.csv)")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("llc", help="estimate the LLC of every checkpoint of a run (resumable)")
    p.add_argument("run_dir")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--calibrate", dest="calibrate", action="store_true", default=None,
                       help="calibrate on the final checkpoint first and use its recommendation "
                            "(the default, unless llc.calibrate is false)")
    group.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                       help="use llc.epsilon and llc.nbeta as configured")
    p.add_argument("--quiet", action="store_true")
    _add_set(p, "llc.num_draws=200", " (llc.* only; the run's config.yaml holds the rest)")
    p.set_defaults(func=cmd_llc)

    p = sub.add_parser("calibrate", help="epsilon x nbeta sweep on a run's final checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--quiet", action="store_true")
    _add_set(p, "llc.calibration.nbetas=[100]", " (llc.* only; the run's config.yaml holds the rest)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("sweep", help="run a study: per-config notebooks, then the report")
    p.add_argument("params")
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--workers", type=int, default=None,
                   help="configs run in parallel, one torch thread each (default: the CPUs this process may use)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler, tcp://HOST:PORT")
    p.add_argument("--cluster", choices=["local"], default=None, help="start a Dask LocalCluster with --workers workers")
    p.add_argument("--no-report", action="store_true", help="skip the report notebook")
    _add_figure_formats(p)
    p.add_argument("--quiet", action="store_true")
    _add_set(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="(re)build a sweep's report notebook and figures from its summary.csv")
    p.add_argument("sweep_dir")
    _add_figure_formats(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        from .runs import CheckpointError, LockedError  # lazy: torch; options and params are checked first
        from .train import TrainingDiverged  # lazy: torch; options and params are checked first

        if isinstance(exc, LockedError):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        if isinstance(exc, (CheckpointError, TrainingDiverged, FileNotFoundError)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
