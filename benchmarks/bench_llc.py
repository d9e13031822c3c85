"""LLC throughput: llcgrok against devinterp's estimator called directly, per checkpoint.

    python benchmarks/bench_llc.py            # 1x64, 13 checkpoints, 4 chains x 150 draws (~4 min)
    python benchmarks/bench_llc.py --quick    # 10 checkpoints, 2 chains x 100 draws (~1.5 min)

One run (x_plus_y p=97, trained by llcgrok through grokking) gives the checkpoints. For each
checkpoint, side by side and interleaved (the order alternates):

* devinterp, the plain way: the reference template model (``nn.MultiheadAttention``, every
  position computed) with the checkpoint's weights, a shuffled ``DataLoader`` over the
  training set, ``estimate_learning_coeff_with_summary(..., cores=1)``;
* llcgrok: ``estimate_llc`` on the lean model loaded from the checkpoint, chains in
  parallel processes (``cores=2``), and the same with ``cores=1`` (which lever does what).

Both use the same sampler settings: SGLD epsilon, n*beta = n / log n, localization, chains,
draws, batch size, no burn-in. Chains are independent random streams on both sides, so
the estimates agree statistically, not bit for bit: the table gives the difference over
the standard error of the difference of the two chain means, and over the chains' spread.
devinterp takes L_n(w*) from ``num_chains`` batches, llcgrok from the whole training set;
the part of the difference that comes from that is shown separately.

Finally ``run_trajectory`` (the product path: also train/val accuracy per checkpoint) runs
over the same run, and is checked to reproduce the per-checkpoint estimates exactly.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402
import reference  # noqa: E402
from llcgrok import runs  # noqa: E402
from llcgrok.config import LLCConfig, RunConfig  # noqa: E402
from llcgrok.tasks import make_task  # noqa: E402
from llcgrok.train import train  # noqa: E402

SIZES = {"1x64": (1, 64), "2x128": (2, 128), "4x256": (4, 256)}


def devinterp_estimate(ckpt_path, task, settings, *, drop_last=False, init_loss=None, lean=False):
    """The plain way, as the field's notebooks call it: the reference model, a shuffled
    DataLoader, devinterp's own L_n(w*). The keyword arguments change one thing each (for
    ``--explain``)."""
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from devinterp.utils import evaluate_ce
    from torch.utils.data import DataLoader, TensorDataset

    ours, _ = runs.load_checkpoint(ckpt_path)
    if lean:
        model = ours
    else:
        model = reference.build_reference(ours.cfg, task.vocab_size, task.num_classes, task.seq_len)
        reference.copy_llcgrok_to_reference(ours, model)
        model = reference.LastPosition(model)
    loader = DataLoader(TensorDataset(task.train_inputs, task.train_targets), batch_size=settings["batch_size"],
                        shuffle=True, drop_last=drop_last)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # devinterp warns about seeds, nbeta and cycling on every call
        out = _call_devinterp(estimate_learning_coeff_with_summary, model, loader, evaluate_ce, SGLD, settings, init_loss)
    seconds = time.perf_counter() - t
    per_chain = np.array([out[f"llc-chain/{i}"] for i in range(settings["num_chains"])])
    trace = np.asarray(out["loss/trace"], dtype=float)
    # devinterp's L_n(w*) is not returned; llc = nbeta * (mean(trace) - init) gives it back
    init = float(trace.mean() - out["llc/mean"] / settings["nbeta"])
    return {"mean": float(out["llc/mean"]), "per_chain": per_chain, "init_loss": init, "mean_loss": float(trace.mean()),
            "seconds": seconds}


def _call_devinterp(estimate, model, loader, evaluate_ce, sgld, settings, init_loss=None):
    return estimate(
        model,
        loader=loader,
        evaluate=evaluate_ce,
        sampling_method=sgld,
        optimizer_kwargs=dict(lr=settings["epsilon"], nbeta=settings["nbeta"], localization=settings["localization"]),
        num_chains=settings["num_chains"],
        num_draws=settings["num_draws"],
        num_burnin_steps=0,
        cores=1,
        seed=settings["seed"],
        device="cpu",
        verbose=False,
        init_loss=init_loss,
    )


def llcgrok_estimate(ckpt_path, task, settings, cores, model=None):
    from llcgrok.llc import estimate_llc

    t = time.perf_counter()
    if model is None:
        model, _ = runs.load_checkpoint(ckpt_path)
    est = estimate_llc(
        model, (task.train_inputs, task.train_targets), loss="ce",
        epsilon=settings["epsilon"], nbeta=settings["nbeta"], localization=settings["localization"],
        num_chains=settings["num_chains"], num_draws=settings["num_draws"], num_burnin_steps=0,
        batch_size=settings["batch_size"], seed=settings["seed"], device="cpu", cores=cores,
    )
    seconds = time.perf_counter() - t
    return {"mean": float(est.mean), "per_chain": np.asarray(est.per_chain, dtype=float), "init_loss": float(est.init_loss),
            "mean_loss": float(np.nanmean(est.loss_trace)), "seconds": seconds, "healthy": est.healthy}


def explain(checkpoints, task, settings, chains: int) -> None:
    """Where the two estimates differ, one change at a time, on the first checkpoint after
    step 0 that is not at a minimum yet and on the last one."""
    st = dict(settings, num_chains=chains)
    picks = [checkpoints[min(3, len(checkpoints) - 1)], checkpoints[-1]]
    print(f"\n--explain: {chains} chains x {st['num_draws']} draws each; 'aligned' = the LLC with L_n(w*) on the whole training set")
    rows = []
    for step, path in picks:
        full = llcgrok_estimate(path, task, st, cores=2)["init_loss"]
        ours, _ = runs.load_checkpoint(path)
        ref = reference.build_reference(ours.cfg, task.vocab_size, task.num_classes, task.seq_len)
        reference.copy_llcgrok_to_reference(ours, ref)
        variants = [
            ("devinterp plain: reference model, DataLoader (last batch of 96 kept), L_n(w*) from chains x batches",
             lambda: devinterp_estimate(path, task, st)),
            ("devinterp, drop_last=True", lambda: devinterp_estimate(path, task, st, drop_last=True)),
            ("devinterp, drop_last=True, L_n(w*) on the whole set", lambda: devinterp_estimate(path, task, st, drop_last=True, init_loss=full)),
            ("same, lean model", lambda: devinterp_estimate(path, task, st, drop_last=True, init_loss=full, lean=True)),
            ("llcgrok estimate_llc, lean model", lambda: llcgrok_estimate(path, task, st, cores=2)),
            ("llcgrok estimate_llc, reference model", lambda: llcgrok_estimate(path, task, st, cores=2, model=reference.LastPosition(ref))),
        ]
        for name, fn in variants:
            r = fn()
            pc = r["per_chain"]
            se = np.nanstd(pc, ddof=1) / math.sqrt(np.isfinite(pc).sum())
            aligned = r["mean"] + st["nbeta"] * (r["init_loss"] - full)
            rows.append([step, name, f"{r['mean']:.2f}", f"{aligned:.2f} ± {se:.2f}"])
            print(f"  step {step}: {name}: {r['mean']:.2f} (aligned {aligned:.2f} ± {se:.2f})", flush=True)
    print(common.table(["step", "estimator", "llc", "aligned llc ± s.e."], rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", default="1x64", choices=list(SIZES))
    parser.add_argument("--checkpoints", type=int, default=None, help="checkpoints of the log schedule (>= 10)")
    parser.add_argument("--chains", type=int, default=None)
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--steps", type=int, default=2000, help="training updates of the run")
    parser.add_argument("--epsilon", type=float, default=LLCConfig().epsilon)
    parser.add_argument("--localization", type=float, default=LLCConfig().localization)
    parser.add_argument("--run-dir", default=None, help="reuse (or keep) the run here instead of a temporary one")
    parser.add_argument("--no-ablation", action="store_true", help="skip llcgrok with cores=1")
    parser.add_argument("--explain", action="store_true",
                        help="also take the difference apart on two checkpoints (8 chains each, ~4 min more)")
    args = parser.parse_args(argv)
    num_ckpt = args.checkpoints or (10 if args.quick else 12)
    chains = args.chains or (2 if args.quick else 4)
    draws = args.draws or (100 if args.quick else 150)
    ablate = not (args.no_ablation or args.quick)

    print(f"# bench_llc  {common.machine_line()}")
    print(f"# command: python benchmarks/bench_llc.py {' '.join(sys.argv[1:])}".rstrip())
    tmp = None
    run_dir = Path(args.run_dir) if args.run_dir else Path(tmp := tempfile.mkdtemp(prefix="bench_llc_"))
    cfg = RunConfig()
    cfg.model.num_layers, cfg.model.d_model = SIZES[args.size]
    cfg.train.num_steps = args.steps
    cfg.train.num_checkpoints = num_ckpt
    cfg.train.device = "cpu"
    t = time.perf_counter()
    result = train(cfg, run_dir, quiet=True)
    print(f"run: {args.size}, x_plus_y p=97, {args.steps} updates in {time.perf_counter() - t:.0f} s, memorised at "
          f"{result.summary['steps_to_memorization']}, grokked at {result.summary['steps_to_grokking']}; {run_dir}")
    checkpoints = runs.list_checkpoints(run_dir)
    task = make_task(cfg.task, seed=cfg.train.seed)
    n = len(task.train_targets)
    settings = {"epsilon": args.epsilon, "nbeta": n / math.log(n), "localization": args.localization,
                "num_chains": chains, "num_draws": draws, "batch_size": 512, "seed": 0}
    print(f"sampler: SGLD epsilon {settings['epsilon']:g}, n*beta = n/log n = {settings['nbeta']:.1f} (n = {n}), "
          f"localization {settings['localization']:g}, {chains} chains x {draws} draws, batch 512, no burn-in; "
          f"{len(checkpoints)} checkpoints, interleaved\n")

    # the first llcgrok call with cores=2 starts its worker pool: that cost is counted below
    variants = [("devinterp", lambda p: devinterp_estimate(p, task, settings)),
                ("llcgrok", lambda p: llcgrok_estimate(p, task, settings, cores=2))]
    if ablate:
        variants.append(("llcgrok cores=1", lambda p: llcgrok_estimate(p, task, settings, cores=1)))
    results = {name: [] for name, _ in variants}
    foreign = []
    for i, (step, path) in enumerate(checkpoints):
        order = variants if i % 2 == 0 else variants[::-1]
        with common.Foreign() as meter:
            for name, fn in order:
                t = time.perf_counter()
                r = fn(path)
                r["wall"] = time.perf_counter() - t
                results[name].append(r)
        foreign.append(meter.cores)
        d, o = results["devinterp"][-1], results["llcgrok"][-1]
        print(f"  step {step:5d}: devinterp {d['mean']:9.2f} ({d['wall']:.1f} s)  llcgrok {o['mean']:9.2f} ({o['wall']:.1f} s)"
              f"  others' cores {meter.cores:.2f}", flush=True)

    # agreement
    rows = []
    zs, rel = [], []
    for (step, _), d, o in zip(checkpoints, results["devinterp"], results["llcgrok"]):
        sd, so = np.nanstd(d["per_chain"], ddof=1), np.nanstd(o["per_chain"], ddof=1)
        se = math.sqrt(sd**2 / chains + so**2 / chains)
        spread = math.sqrt((sd**2 + so**2) / 2)
        diff = o["mean"] - d["mean"]
        init_part = settings["nbeta"] * (d["init_loss"] - o["init_loss"])  # what devinterp's few-batch L_n(w*) adds
        z = diff / se if se > 0 else float("nan")
        zs.append(z)
        rel.append(diff / spread if spread > 0 else float("nan"))
        rows.append([step, f"{d['mean']:.2f} ± {sd:.2f}", f"{o['mean']:.2f} ± {so:.2f}", diff, z, diff / spread if spread else float("nan"),
                     init_part, (diff - init_part) / se if se > 0 else float("nan")])
    print(common.table(
        ["step", "devinterp llc ± chain sd", "llcgrok llc ± chain sd", "difference", "diff / s.e.", "diff / chain sd",
         "from L_n(w*) choice", "diff / s.e. without it"],
        rows,
    ))
    zs_arr = np.array(zs)
    print(f"|diff / s.e.|: median {np.nanmedian(np.abs(zs_arr)):.2f}, {np.mean(np.abs(zs_arr) < 2):.0%} of checkpoints within 2; "
          f"|diff / chain sd|: median {np.nanmedian(np.abs(rel)):.2f}")

    # throughput
    dev_s = [r["wall"] for r in results["devinterp"]]
    quiet = [i for i, f in enumerate(foreign) if f < 0.25]
    use = quiet if len(quiet) >= 3 else list(range(len(foreign)))
    note = f"{len(use)} of {len(foreign)} checkpoints quiet" if use is quiet else "WARNING: few quiet checkpoints, all used"
    table_rows = []
    for name, _ in variants:
        walls = [results[name][i]["wall"] for i in use]
        total = sum(r["wall"] for r in results[name])
        ratios = [dev_s[i] / results[name][i]["wall"] for i in use]
        table_rows.append([name, total / len(checkpoints), common.median(walls), common.median(ratios), common.spread(ratios)])
    print(f"\nseconds per checkpoint ({note}; ratio = devinterp's time / this one's, per checkpoint)")
    print(common.table(["path", "mean s/checkpoint (all)", "median s/checkpoint", "speed-up vs devinterp (median)", "range"],
                       table_rows))

    # the product path
    from llcgrok.trajectory import run_trajectory

    llc_cfg = LLCConfig(epsilon=settings["epsilon"], nbeta=settings["nbeta"], localization=settings["localization"],
                        num_chains=chains, num_draws=draws, batch_size=512, seed=0, cores=2, device="cpu", calibrate=False)
    (run_dir / "llc.csv").unlink(missing_ok=True)
    t = time.perf_counter()
    frame = run_trajectory(run_dir, llc_cfg, calibrate=False, quiet=True)
    took = time.perf_counter() - t
    same = np.allclose(frame["llc_mean"].to_numpy(dtype=float), [r["mean"] for r in results["llcgrok"]], equal_nan=True)
    print(f"\nrun_trajectory (cores=2, with train/val accuracy per checkpoint): {took / len(frame):.2f} s/checkpoint; "
          f"reproduces the estimates above: {same}")
    if args.explain:
        explain(checkpoints, task, settings, chains=8)
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
