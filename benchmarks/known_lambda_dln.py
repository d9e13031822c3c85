"""The LLC estimator on a 60k-parameter deep linear network whose learning coefficient is known.

    python benchmarks/known_lambda_dln.py                      # the table of docs: gamma 1, 10, 100
    python benchmarks/known_lambda_dln.py --gammas 100 --epsilons 1e-5 3e-5 --draws 500

The network is 50-200-200-50 (60,000 parameters) at a rank-5 teacher, every factor of rank 5
(``llcgrok.toy_models.make_dln``); Aoyagi's formula gives lambda = 1250, multiplicity 1
(``llcgrok.known_lambda.dln_lambda``), against 30,000 for a regular model of that size. For
each (gamma, epsilon) the script runs ``estimate_llc`` with explicit settings (n*beta =
n / log n, full batch, the given burn-in and draws) and prints one row: the estimate and
its standard error over chains, the ratio to lambda, MALA acceptance, R-hat, the trace's
second half over its first (near 1: flat; above: still rising), and the seconds it took.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from llcgrok.known_lambda import dln_lambda
from llcgrok.llc import AllChainsFailed, estimate_llc
from llcgrok.toy_models import make_dln

WIDTHS, RANK = (50, 200, 200, 50), 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gammas", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    p.add_argument("--epsilons", type=float, nargs="+", default=[1e-5, 3e-6])
    p.add_argument("--num-data", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None, help="default: the whole data set")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--burnin", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    return p.parse_args(argv)


def one_row(model, data, loss, lam: float, gamma: float, epsilon: float, args) -> dict:
    start = time.perf_counter()
    try:
        est = estimate_llc(
            model, data, loss=loss, epsilon=epsilon, localization=gamma, num_chains=args.chains,
            num_draws=args.draws, num_burnin_steps=args.burnin, batch_size=args.batch_size or args.num_data,
            seed=args.seed,
        )
    except AllChainsFailed as exc:
        return {"gamma": gamma, "epsilon": epsilon, "llc": math.nan, "note": f"all chains failed: {exc.reasons[0]}",
                "seconds": time.perf_counter() - start}
    trace = est.llc_trace.mean(axis=0)
    half = len(trace) // 2
    d = est.diagnostics
    return {
        "gamma": gamma, "epsilon": epsilon, "nbeta": est.nbeta, "llc": est.mean,
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
    print(f"DLN {'-'.join(map(str, WIDTHS))} rank {RANK}: {d} parameters, lambda {lam:g} (multiplicity {multiplicity}), "
          f"n {args.num_data}, batch {args.batch_size or args.num_data}, {args.chains} chains x {args.draws} draws, "
          f"burn-in {args.burnin}, seed {args.seed}")
    print("| gamma | epsilon | nbeta | llc ± se | llc / lambda | MALA | R-hat | 2nd/1st half | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for gamma in args.gammas:
        for epsilon in args.epsilons:
            r = one_row(model, data, loss, lam, gamma, epsilon, args)
            if r["note"]:
                print(f"| {gamma:g} | {epsilon:g} | | {r['note']} | | | | | {r['seconds']:.0f} |", flush=True)
                continue
            print(f"| {gamma:g} | {epsilon:g} | {r['nbeta']:.4g} | {r['llc']:.4g} ± {r['se']:.2g} | {r['ratio']:.3f} | "
                  f"{r['mala']:.3f} | {r['r_hat']:.3f} | {r['second_over_first']:.3f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
