"""The LLC estimate of one checkpoint down a localization ladder, at explicit settings.

    python benchmarks/gamma_ladder.py RUN_DIR --step 2260 --gammas 1e5,1e4,1e3,1e2 \
        --fraction 0.1 --burnin 1000 --draws 2000 --chains 2 [--nbeta 10000] [--sampler devinterp]
        [--method rmsprop_sgld]

epsilon = fraction / (nbeta h_max + gamma) at every rung (h_max by power iteration at the
checkpoint), so every rung is as far from the stability limit; nbeta defaults to n / log n.
Each line: the estimate, its spread over chains, the trace's four quarter means (a rising
trace has not relaxed), MALA, drift, R-hat, escape, and the pure-curvature value
nbeta tr(H) / (2 gamma) it would equal if the localization dominated. docs/results.md
("Is it an LLC?") has the tables this printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llcgrok.curvature import curvature_llc, measure_curvature
from llcgrok.llc import default_nbeta, estimate_llc
from llcgrok.rundata import open_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--gammas", default="1e5,1e4,1e3,1e2")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--burnin", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--nbeta", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sampler", default="auto")
    parser.add_argument("--method", default="sgld", choices=["sgld", "rmsprop_sgld"])
    parser.add_argument("--cores", type=int, default=1)
    args = parser.parse_args()
    view = open_run(args.run_dir, "cpu")
    model = view.load(dict(view.checkpoints)[args.step])
    curvature = measure_curvature(model, view.train, loss=view.loss)
    nbeta = args.nbeta or default_nbeta(view.num_data)
    print(f"step {args.step}: tr(H) {curvature.trace:.0f} ± {curvature.trace_se:.0f}, h_max {curvature.top_eigenvalue:.1f}, nbeta {nbeta:.1f}")
    for gamma in (float(g) for g in args.gammas.split(",")):
        epsilon = args.fraction / (nbeta * curvature.top_eigenvalue + gamma)
        t0 = time.perf_counter()
        est = estimate_llc(model, view.train, loss=view.loss, epsilon=epsilon, nbeta=nbeta, localization=gamma,
                           num_chains=args.chains, num_draws=args.draws, num_burnin_steps=args.burnin,
                           batch_size=args.batch_size, seed=0, cores=args.cores, sampler=args.sampler,
                           method=args.method)
        d, trace = est.diagnostics, est.llc_trace.mean(axis=0)
        quarters = [round(float(q.mean()), 1) for q in np.array_split(trace, 4)]
        print(f"gamma {gamma:g} eps {epsilon:.3g}: llc {est.mean:.3f} ± {est.std:.3f}, quarters {quarters}, "
              f"mala {d['mala_acceptance']:.2f}, drift {d['trace_drift']:+.2f}, R-hat {d['r_hat']:.3f}, "
              f"escaped {d['escaped']}, curvature value {curvature_llc(curvature.trace, nbeta, gamma):.3g}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
