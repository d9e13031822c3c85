"""The LLC estimator on a 60k-parameter deep linear network whose learning coefficient is known.

    python benchmarks/known_lambda_dln.py            # the measured table below (ROWS), ~25 min, 1 thread
    python benchmarks/known_lambda_dln.py --quick    # three of its rows (5,000 burn-in steps), ~4 min
    python benchmarks/known_lambda_dln.py --gammas 100 --epsilons 1e-5 3e-5 --burnin 3000 --draws 500

The network is 50-200-200-50 (60,000 parameters) at a rank-5 teacher, every factor of rank 5
(``llcgrok.toy_models.make_dln``); Aoyagi's formula gives lambda = 1250, multiplicity 1
(``llcgrok.known_lambda.dln_lambda``), against 30,000 for a regular model of that size. For
each (gamma, epsilon) the script runs ``estimate_llc`` with explicit settings (n*beta =
n / log n, full batch, the given burn-in and draws) and prints one row: the estimate and
its standard error over chains, the ratio to lambda, MALA acceptance, R-hat, the trace's
second half over its first (near 1: flat; above: still rising), and the seconds it took.

Measured (seed 0, n 1000, n*beta 144.8, 2 chains, full batch, one torch thread, batched
sampler, on a 2-core CPU shared with other jobs):

| gamma | epsilon | burn-in | draws | llc ± se | llc / lambda | MALA | R-hat | 2nd/1st half | seconds |
|---|---|---|---|---|---|---|---|---|---|
| 100 | 3e-4 | 3000 | 1000 | 1038 ± 0.5 | 0.830 | 0.420 | 1.000 | 1.000 | 45 |
| 100 | 1e-4 | 3000 | 1000 | 951 ± 0.8 | 0.761 | 0.715 | 1.000 | 1.000 | 45 |
| 100 | 3e-5 | 3000 | 1000 | 928 ± 1.4 | 0.742 | 0.929 | 1.067 | 1.019 | 47 |
| 100 | 1e-5 | 5000 | 1000 | 900 ± 9.9 | 0.720 | 0.986 | 1.389 | 0.986 | 73 |
| 10 | 1e-4 | 3000 | 1000 | 4741 ± 8.6 | 3.793 | 0.275 | 1.008 | 1.019 | 51 |
| 10 | 3e-5 | 3000 | 1000 | 2078 ± 48 | 1.663 | 0.492 | 1.326 | 1.132 | 49 |
| 10 | 1e-5 | 5000 | 1000 | 1297 ± 1.7 | 1.038 | 0.687 | 1.058 | 1.010 | 74 |
| 10 | 3e-6 | 5000 | 1000 | 1191 ± 11 | 0.953 | 0.993 | 1.333 | 1.010 | 74 |
| 10 | 3e-6 | 20000 | 2000 | 1266 ± 6.8 | 1.013 | 0.879 | 1.038 | 1.008 | 258 |
| 10 | 1e-6 | 5000 | 1000 | 685 ± 3.7 | 0.548 | 0.999 | 2.335 | 1.127 | 71 |
| 1 | 3e-4 | 3000 | 1000 | all chains failed (non-finite loss) | | | | | 38 |
| 1 | 1e-4 | 3000 | 1000 | 7436 ± 2.2 | 5.949 | 0.075 | 1.015 | 1.024 | 50 |
| 1 | 3e-5 | 3000 | 1000 | 4978 ± 66 | 3.982 | 0.457 | 1.220 | 1.169 | 49 |
| 1 | 1e-5 | 5000 | 1000 | 1348 ± 1.3 | 1.078 | 0.602 | 1.070 | 1.018 | 69 |
| 1 | 3e-6 | 5000 | 1000 | 1214 ± 10 | 0.971 | 0.992 | 1.331 | 1.007 | 68 |
| 1 | 3e-6 | 20000 | 2000 | 1287 ± 5.7 | 1.030 | 0.785 | 1.046 | 1.011 | 259 |
| 1 | 1e-6 | 5000 | 1000 | 714 ± 3.8 | 0.571 | 0.999 | 2.337 | 1.128 | 70 |

What it says: at gamma 100 the estimate is stable in epsilon from 3e-5 down (900-930,
0.72-0.74 lambda) and relaxed; the localization holds it below lambda. At gamma 1 and 10 a
stable step is 3e-6 or less (1e-5 and up inflate it, MALA below 0.7), and the estimate is
then within 5 % of lambda after 6,000 steps and 1-3 % above it after 22,000, but still
creeping up (about 1 % per 1,000 draws) with MALA falling (0.99 -> 0.79-0.88): the flat
directions relax over about 1 / (epsilon gamma) = 3e4-3e5 steps and, as they spread, the
sharpest curvature grows, so no step is small enough for long. The rows at 1e-6 have not
yet risen (0.55-0.57 lambda at 6,000 steps): a smaller step is not a safer one here.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from llcgrok.known_lambda import dln_lambda
from llcgrok.llc import AllChainsFailed, estimate_llc
from llcgrok.toy_models import make_dln

WIDTHS, RANK = (50, 200, 200, 50), 5

# (gamma, epsilon, burn-in, draws) of the measured table. Each gamma has an epsilon ladder:
# a step is too coarse when MALA falls well below 0.9 and the estimate moves with it.
# Relaxation of the flat directions takes about 1 / (epsilon * gamma) steps, so at gamma
# 1 and 10 the rows with 20,000 burn-in steps say how far the longer runs move.
ROWS = [
    (100.0, 3e-4, 3000, 1000), (100.0, 1e-4, 3000, 1000), (100.0, 3e-5, 3000, 1000), (100.0, 1e-5, 5000, 1000),
    (10.0, 1e-4, 3000, 1000), (10.0, 3e-5, 3000, 1000), (10.0, 1e-5, 5000, 1000), (10.0, 3e-6, 5000, 1000),
    (10.0, 3e-6, 20000, 2000), (10.0, 1e-6, 5000, 1000),
    (1.0, 3e-4, 3000, 1000), (1.0, 1e-4, 3000, 1000), (1.0, 3e-5, 3000, 1000), (1.0, 1e-5, 5000, 1000),
    (1.0, 3e-6, 5000, 1000), (1.0, 3e-6, 20000, 2000), (1.0, 1e-6, 5000, 1000),
]
QUICK = [(100.0, 1e-5, 5000, 1000), (10.0, 3e-6, 5000, 1000), (1.0, 3e-6, 5000, 1000)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="three rows of the table (~4 min)")
    p.add_argument("--gammas", type=float, nargs="+", help="a grid of your own instead of the table ...")
    p.add_argument("--epsilons", type=float, nargs="+", default=[1e-5], help="... with these steps")
    p.add_argument("--num-data", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None, help="default: the whole data set")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--draws", type=int, default=1000, help="for --gammas")
    p.add_argument("--burnin", type=int, default=5000, help="for --gammas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    return p.parse_args(argv)


def one_row(model, data, loss, lam: float, row: tuple, args) -> dict:
    gamma, epsilon, burnin, draws = row
    start = time.perf_counter()
    try:
        est = estimate_llc(
            model, data, loss=loss, epsilon=epsilon, localization=gamma, num_chains=args.chains,
            num_draws=draws, num_burnin_steps=burnin, batch_size=args.batch_size or args.num_data,
            seed=args.seed,
        )
    except AllChainsFailed as exc:
        return {"note": f"all chains failed: {exc.reasons[0]}", "seconds": time.perf_counter() - start}
    trace = est.llc_trace.mean(axis=0)
    half = len(trace) // 2
    d = est.diagnostics
    return {
        "nbeta": est.nbeta, "llc": est.mean,
        "se": est.std / math.sqrt(est.num_chains - d["num_diverged"]) if est.num_chains > 1 else math.nan,
        "ratio": est.mean / lam, "mala": d["mala_acceptance"], "r_hat": d["r_hat"],
        "second_over_first": float(trace[half:].mean() / trace[:half].mean()),
        "diverged": d["num_diverged"], "sampler": d.get("sampler", ""), "seconds": time.perf_counter() - start, "note": "",
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    lam, multiplicity = dln_lambda(WIDTHS, RANK)
    model, data, loss = make_dln(WIDTHS, RANK, num_data=args.num_data, seed=args.seed)
    d = sum(p.numel() for p in model.parameters())
    if args.gammas:
        rows = [(g, e, args.burnin, args.draws) for g in args.gammas for e in args.epsilons]
    else:
        rows = QUICK if args.quick else ROWS
    print(f"DLN {'-'.join(map(str, WIDTHS))} rank {RANK}: {d} parameters, lambda {lam:g} (multiplicity {multiplicity}), "
          f"n {args.num_data}, batch {args.batch_size or args.num_data}, {args.chains} chains, seed {args.seed}")
    print("| gamma | epsilon | burn-in | draws | nbeta | llc ± se | llc / lambda | MALA | R-hat | 2nd/1st half | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = one_row(model, data, loss, lam, row, args)
        head = f"| {row[0]:g} | {row[1]:g} | {row[2]} | {row[3]} |"
        if r["note"]:
            print(f"{head} | {r['note']} | | | | | {r['seconds']:.0f} |", flush=True)
            continue
        print(f"{head} {r['nbeta']:.4g} | {r['llc']:.4g} ± {r['se']:.2g} | {r['ratio']:.3f} | {r['mala']:.3f} | "
              f"{r['r_hat']:.3f} | {r['second_over_first']:.3f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
