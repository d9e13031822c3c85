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
"llcgrok" is ``estimate_llc``'s default path (``sampler="auto"``, the batched sampler).

The batched sampler (``llcgrok.sgld_batched``), against devinterp at equal settings:

    python benchmarks/bench_llc.py --samplers              # 1x64, 2x64, 2x128; 4 x 200 draws, batch 256 (~20 min)
    python benchmarks/bench_llc.py --samplers --main-job   # also the certified LLC cost of params/quick.yaml
    python benchmarks/bench_llc.py --profile --sizes 1x64  # where the batched step's time goes

For each size a short run (``--train-steps`` updates; checkpoints at 0 and at the end)
gives two checkpoints; per round, one checkpoint, every path once, the order alternating,
rounds disturbed by other processes redone: devinterp's ``estimate_learning_coeff_with_summary``
the plain way (reference model, DataLoader) with ``cores=1`` and ``cores=2`` (one thread
per worker), both handed the full-data L_n(w*); llcgrok's devinterp loop with ``cores=2``;
llcgrok's batched sampler. Then chain-steps per second against the FLOP-bound limit of the
measured matmul peak, the agreement of the estimates, and the certified setting
(``--certified-chains/draws/burnin``, default 4 x 1000 + 500) per checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
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


def devinterp_estimate(ckpt_path, task, settings, *, drop_last=False, init_loss=None, lean=False, cores=1, burnin=0):
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
        out = _call_devinterp(estimate_learning_coeff_with_summary, model, loader, evaluate_ce, SGLD, settings, init_loss,
                              cores=cores, burnin=burnin)
    seconds = time.perf_counter() - t
    per_chain = np.array([out[f"llc-chain/{i}"] for i in range(settings["num_chains"])])
    trace = np.asarray(out["loss/trace"], dtype=float)
    # devinterp's L_n(w*) is not returned; llc = nbeta * (mean(trace) - init) gives it back
    init = float(trace.mean() - out["llc/mean"] / settings["nbeta"])
    return {"mean": float(out["llc/mean"]), "per_chain": per_chain, "init_loss": init, "mean_loss": float(trace.mean()),
            "seconds": seconds}


def _call_devinterp(estimate, model, loader, evaluate_ce, sgld, settings, init_loss=None, cores=1, burnin=0):
    return estimate(
        model,
        loader=loader,
        evaluate=evaluate_ce,
        sampling_method=sgld,
        optimizer_kwargs=dict(lr=settings["epsilon"], nbeta=settings["nbeta"], localization=settings["localization"]),
        num_chains=settings["num_chains"],
        num_draws=settings["num_draws"],
        num_burnin_steps=burnin,
        cores=cores,
        seed=settings["seed"],
        device="cpu",
        verbose=False,
        init_loss=init_loss,
    )


def llcgrok_estimate(ckpt_path, task, settings, cores, model=None, sampler="auto", burnin=0, method="sgld"):
    from llcgrok.llc import estimate_llc

    t = time.perf_counter()
    if model is None:
        model, _ = runs.load_checkpoint(ckpt_path)
    est = estimate_llc(
        model, (task.train_inputs, task.train_targets), loss="ce",
        epsilon=settings["epsilon"], nbeta=settings["nbeta"], localization=settings["localization"],
        num_chains=settings["num_chains"], num_draws=settings["num_draws"], num_burnin_steps=burnin,
        batch_size=settings["batch_size"], seed=settings["seed"], device="cpu", cores=cores, sampler=sampler, method=method,
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


# --------------------------------------------------------------------------- --samplers: the batched sampler

QUICK_SIZES = {f"{l}x{d}": (l, d) for l in (1, 2) for d in (32, 48, 64)}  # params/quick.yaml's grid
SAMPLER_SIZES = {**QUICK_SIZES, "2x128": (2, 128)}
DEFAULT_SAMPLER_SIZES = ["1x64", "2x64", "2x128"]


def _short_run(size: tuple, steps: int, root: Path):
    """A run of ``steps`` updates with checkpoints at 0 and at the end (timing needs no grokked weights)."""
    cfg = RunConfig()
    cfg.model.num_layers, cfg.model.d_model = size
    cfg.train.num_steps, cfg.train.checkpoint_schedule, cfg.train.num_checkpoints = steps, "linear", 1
    cfg.train.device = "cpu"
    run_dir = root / f"L{size[0]}d{size[1]}"
    train(cfg, run_dir, quiet=True)
    return cfg, runs.list_checkpoints(run_dir)


def _full_init(path, task) -> float:
    from torch.utils.data import TensorDataset

    from llcgrok.llc import full_loss, make_evaluate

    model, _ = runs.load_checkpoint(path)
    return full_loss(model, TensorDataset(task.train_inputs, task.train_targets), make_evaluate("ce"), model.head.weight.device)[0]


def _devinterp_2(path, task, settings, init, burnin=0):
    """devinterp's cores=2: its spawn pool, one torch thread per worker (with its default of
    two threads each, two workers on two cores oversubscribe and run slower)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return devinterp_estimate(path, task, settings, init_loss=init, cores=2, burnin=burnin)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _sampler_paths(task, settings, inits: dict) -> dict:
    """Name -> fn(checkpoint path): the paths compared, all with the full-data L_n(w*)."""
    return {
        "devinterp cores=1": lambda p: devinterp_estimate(p, task, settings, init_loss=inits[p], cores=1),
        "devinterp cores=2": lambda p: _devinterp_2(p, task, settings, inits[p]),
        "llcgrok devinterp loop, cores=2": lambda p: llcgrok_estimate(p, task, settings, cores=2, sampler="devinterp"),
        "llcgrok batched": lambda p: llcgrok_estimate(p, task, settings, cores=1, sampler="batched"),
        "llcgrok batched, cores=2": lambda p: llcgrok_estimate(p, task, settings, cores=2, sampler="batched"),
    }


def _warm_pool() -> None:
    """Start llcgrok's chain worker pool (and import both paths in it) before any timing:
    it costs a few seconds once per process, not per checkpoint."""
    import torch

    from llcgrok.llc import estimate_llc

    x, y = torch.randn(64, 2), torch.randn(64, 1)
    for sampler in ("devinterp", "batched"):
        estimate_llc(torch.nn.Linear(2, 1), (x, y), loss="mse", epsilon=1e-4, localization=1.0, num_chains=2,
                     num_draws=3, batch_size=16, cores=2, sampler=sampler)


def _round(paths: dict, checkpoints, attempt: int, patience: float) -> dict:
    """Every path once on one checkpoint, in alternating order, after waiting (at most
    ``patience`` seconds) for the other processes of a shared machine to go quiet."""
    common.wait_for_quiet(max_wait=patience)
    path = checkpoints[attempt % len(checkpoints)][1]
    names = list(paths) if attempt % 2 == 0 else list(paths)[::-1]
    out = {"checkpoint": checkpoints[attempt % len(checkpoints)][0]}
    for name in names:
        t = time.perf_counter()
        out[name] = paths[name](path)
        out[name]["wall"] = time.perf_counter() - t
    return out


def _flop_bound(cfg, task, batch: int, peak: float) -> float:
    """Chain-steps per second at the measured matmul peak: forward + backward ~ 3 forwards."""
    from llcgrok.model import flops_per_example

    return peak * 1e9 / (3 * flops_per_example(cfg.model, task.num_classes, task.seq_len) * batch)


def sampler_table(args) -> None:
    import torch

    common.wait_for_quiet(max_wait=args.patience)
    peak = max(common.measured_matmul_peak() for _ in range(3))
    print(f"measured matmul peak (2048^3 fp32, {torch.get_num_threads()} threads, best of 3): {peak:.0f} GFLOP/s\n")
    root = Path(tempfile.mkdtemp(prefix="bench_samplers_"))
    _warm_pool()
    speed_rows, flop_rows, agree_rows, cost = [], [], [], {}
    for size in args.sizes:
        cfg, checkpoints = _short_run(SAMPLER_SIZES[size], args.train_steps, root)
        task = make_task(cfg.task, seed=cfg.train.seed)
        n = len(task.train_targets)
        settings = {"epsilon": args.epsilon, "nbeta": n / math.log(n), "localization": args.localization,
                    "num_chains": args.chains or 4, "num_draws": args.draws or 200, "batch_size": args.batch, "seed": 0}
        inits = {p: _full_init(p, task) for _, p in checkpoints}
        paths = _sampler_paths(task, settings, inits)
        results, note = common.quiet_rounds(lambda a: _round(paths, checkpoints, a, args.patience), args.rounds, extra=2 * args.rounds)
        chain_steps = settings["num_chains"] * settings["num_draws"]
        best_dev = [min(r["devinterp cores=1"]["wall"], r["devinterp cores=2"]["wall"]) for r in results]
        for name in paths:
            walls = [r[name]["wall"] for r in results]
            ratios = [b / r[name]["wall"] for b, r in zip(best_dev, results)]
            speed_rows.append([size, name, common.median(walls), common.median(ratios), common.spread(ratios),
                               chain_steps / common.median(walls), note])
        bound = _flop_bound(cfg, task, settings["batch_size"], peak)
        rate = chain_steps / common.median([r["llcgrok batched"]["wall"] for r in results])
        flop_rows.append([size, sum(p.numel() for p in runs.load_checkpoint(checkpoints[0][1])[0].parameters()),
                          f"{3 * cfg_flops(cfg, task) * settings['batch_size'] / 1e9:.3f}", rate, bound, f"{rate / bound:.0%}"])
        for r in results:
            d, b = (r["devinterp cores=1"] if r["devinterp cores=1"]["wall"] <= r["devinterp cores=2"]["wall"]
                    else r["devinterp cores=2"]), r["llcgrok batched"]
            se = math.sqrt(np.var(d["per_chain"], ddof=1) / len(d["per_chain"]) + np.var(b["per_chain"], ddof=1) / len(b["per_chain"]))
            agree_rows.append([size, r["checkpoint"], d["mean"], b["mean"], (b["mean"] - d["mean"]) / se if se > 0 else float("nan")])
        cost[size] = (cfg, task, settings, checkpoints, best_dev, chain_steps)
        print(f"  {size}: done ({note})", flush=True)
    print(f"\nseconds per checkpoint, {args.chains or 4} chains x {args.draws or 200} draws, batch {args.batch}, no burn-in "
          "(speed-up = the faster of devinterp's cores=1 and cores=2, over this path; per round, median)")
    print(common.table(["size", "path", "median s/checkpoint", "speed-up vs devinterp", "range", "chain-steps/s", "rounds"], speed_rows))
    print("\nbatched chain-steps per second against the FLOP-bound limit (lean model; 3 x forward FLOPs per example x batch)")
    print(common.table(["size", "params", "GFLOP/chain-step", "batched chain-steps/s", "FLOP-bound chain-steps/s", "share"], flop_rows))
    print("\nagreement, devinterp (faster path) vs batched, same full-data L_n(w*), independent chains")
    print(common.table(["size", "step", "devinterp llc", "batched llc", "diff / s.e."], agree_rows))
    certified_table(args, cost)


def cfg_flops(cfg, task) -> int:
    from llcgrok.model import flops_per_example

    return flops_per_example(cfg.model, task.num_classes, task.seq_len)


def certified_table(args, cost: dict) -> None:
    """The certified setting per checkpoint: batched measured, devinterp extrapolated from
    its seconds per chain-step above (its cost is linear in the steps)."""
    rows = []
    steps = args.certified_chains * (args.certified_draws + args.certified_burnin)
    for size, (cfg, task, settings, checkpoints, best_dev, chain_steps) in cost.items():
        st = dict(settings, num_chains=args.certified_chains, num_draws=args.certified_draws)
        walls, others = [], []
        for _, path in checkpoints:
            common.wait_for_quiet(max_wait=args.patience)
            with common.Foreign() as meter:
                t = time.perf_counter()
                llcgrok_estimate(path, task, st, cores=1, sampler="batched", burnin=args.certified_burnin)
                walls.append(time.perf_counter() - t)
            others.append(meter.cores)
        dev = common.median(best_dev) / chain_steps * steps
        rows.append([size, common.median(walls), dev, dev / common.median(walls), max(others)])
    print(f"\ncertified setting per checkpoint: {args.certified_chains} chains x {args.certified_draws} draws + "
          f"{args.certified_burnin} burn-in steps, batch {args.batch}")
    print(common.table(["size", "batched s/checkpoint (measured)", "devinterp s/checkpoint (extrapolated)", "speed-up",
                        "others' cores (max)"], rows))


def main_job_table(args) -> None:
    """The LLC part of the main job (params/quick.yaml, 6 architectures x 2 seeds) at the
    certified setting: batched seconds per checkpoint measured per architecture, times the
    checkpoints each run keeps."""
    from llcgrok.config import load_params
    from llcgrok.train import checkpoint_steps

    params = load_params(Path(__file__).resolve().parent.parent / "params" / "quick.yaml")
    seeds = len(params.grid.seeds or [0])
    common.wait_for_quiet(max_wait=args.patience)
    peak = max(common.measured_matmul_peak() for _ in range(3))
    chain_steps = args.certified_chains * (args.certified_draws + args.certified_burnin)
    root = Path(tempfile.mkdtemp(prefix="bench_mainjob_"))
    rows, total, bound = [], 0.0, 0.0
    for size, shape in QUICK_SIZES.items():
        cfg, checkpoints = _short_run(shape, args.train_steps, root)
        task = make_task(cfg.task, seed=cfg.train.seed)
        st = {"epsilon": args.epsilon, "nbeta": 100.0, "localization": args.localization, "num_chains": args.certified_chains,
              "num_draws": args.certified_draws, "batch_size": args.batch, "seed": 0}
        common.wait_for_quiet(max_wait=args.patience)
        with common.Foreign() as meter:
            t = time.perf_counter()
            llcgrok_estimate(checkpoints[-1][1], task, st, cores=1, sampler="batched", burnin=args.certified_burnin)
            per = time.perf_counter() - t
        n_ckpt = len(checkpoint_steps(params.base.train))
        total += per * n_ckpt * seeds
        floor = chain_steps / _flop_bound(cfg, task, args.batch, peak)
        bound += floor * n_ckpt * seeds
        rows.append([size, per, floor, n_ckpt, per * n_ckpt * seeds, meter.cores])
    print(f"\nmain job, LLC trajectories at the certified setting ({args.certified_chains} x {args.certified_draws} + "
          f"{args.certified_burnin} burn-in): {seeds} seeds x the checkpoints of params/quick.yaml's schedule")
    print(common.table(["size", "batched s/checkpoint", "FLOP-bound s/checkpoint", "checkpoints per run", f"s for {seeds} seeds",
                        "others' cores"], rows))
    print(f"total: {total / 60:.1f} min; at the FLOP-bound limit ({peak:.0f} GFLOP/s): {bound / 60:.1f} min "
          "(trajectories only; calibration adds its points at the same cost per point)")


def profile_batched(args) -> None:
    """Where the batched step's time goes (1x64): the vmapped forward + backward alone, the
    update + MALA alone, noise and batches, and torch's operator profile of whole steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from llcgrok import sgld_batched
    from llcgrok._devinterp import ChainSpec
    from llcgrok.llc import chain_seeds, make_evaluate

    cfg, checkpoints = _short_run(SAMPLER_SIZES[args.sizes[0]], args.train_steps, Path(tempfile.mkdtemp(prefix="bench_prof_")))
    common.wait_for_quiet(max_wait=args.patience)
    task = make_task(cfg.task, seed=cfg.train.seed)
    model, _ = runs.load_checkpoint(checkpoints[-1][1])
    from torch.utils.data import TensorDataset

    data = TensorDataset(task.train_inputs, task.train_targets)
    n = len(data)
    specs = [ChainSpec(epsilon=args.epsilon, nbeta=n / math.log(n), localization=args.localization, num_draws=200,
                       num_burnin_steps=0, batch_size=args.batch, seed=s) for s in chain_seeds(0, args.chains or 4)]
    model.train()
    run = sgld_batched._Run([model] * len(specs), data, make_evaluate("ce"), specs, specs[0], torch.device("cpu"))
    batch = run.batches(0)
    noise = sgld_batched.draw_noise(run.generators, 1, run.weights.size, run.weights.dtype, torch.device("cpu"))[:, 0]
    run._step(0, noise)  # allocates the traces

    def per_call(fn, reps=50):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1e3

    loss, grad = run.loss_grad(batch)
    parts = [
        ["batch gather (all chains)", per_call(lambda: run.batches(5))],
        ["noise, per step (block draw / steps)", per_call(lambda: sgld_batched.draw_noise(run.generators, 50, run.weights.size, run.weights.dtype, "cpu"), 5) / 50],
        ["vmapped forward + backward", per_call(lambda: run.loss_grad(batch))],
        ["update + MALA", per_call(lambda: _update_only(run, grad.clone(), loss, noise))],
        ["whole step", per_call(lambda: run._step(5, noise))],
    ]
    print(f"\nbatched step, {args.sizes[0]}, {len(specs)} chains, batch {args.batch} (ms per step, all chains)")
    print(common.table(["part", "ms"], parts))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(30):
            run._step(5 + i, noise)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def _update_only(run, grad, loss, noise) -> None:
    import torch

    with torch.no_grad():
        drift, local = run.update.drift(run.weights.w, run.weights.centre, grad)
        run._record_mala(5, run.weights.w, drift, loss * run.spec.nbeta + local, loss)
        run.update.apply(run.weights.w, drift, noise)


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
    parser.add_argument("--samplers", action="store_true",
                        help="the batched sampler against devinterp per size, its FLOP-bound share, the certified setting")
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SAMPLER_SIZES, choices=list(SAMPLER_SIZES))
    parser.add_argument("--train-steps", type=int, default=300, help="--samplers: updates of each size's short run")
    parser.add_argument("--rounds", type=int, default=2, help="--samplers: quiet rounds per size (checkpoints alternate)")
    parser.add_argument("--batch", type=int, default=256, help="--samplers: SGLD batch size")
    parser.add_argument("--patience", type=float, default=600, help="--samplers: seconds to wait for a quiet machine per round")
    parser.add_argument("--certified-chains", type=int, default=4)
    parser.add_argument("--certified-draws", type=int, default=1000)
    parser.add_argument("--certified-burnin", type=int, default=500)
    parser.add_argument("--main-job", action="store_true", help="the certified LLC cost of params/quick.yaml's trajectories")
    parser.add_argument("--profile", action="store_true", help="where the batched step's time goes (first of --sizes)")
    args = parser.parse_args(argv)
    if args.samplers or args.profile or args.main_job:
        # devinterp's and the sampler's notes (no burn-in, cycled batches) say nothing about speed
        warnings.simplefilter("ignore")
        os.environ["PYTHONWARNINGS"] = "ignore"  # the spawned chain workers too
        print(f"# bench_llc  {common.machine_line()}")
        print(f"# command: python benchmarks/bench_llc.py {' '.join(sys.argv[1:])}".rstrip())
        if args.profile:
            profile_batched(args)
        if args.samplers:
            sampler_table(args)
        if args.main_job:
            main_job_table(args)
        return
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
                        num_chains=chains, num_draws=draws, num_burnin_steps=0, batch_size=512, seed=0, cores=2, device="cpu",
                        calibrate=False)
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
