"""The sampler's minibatch size: what it costs and whether it moves the estimate.

    python benchmarks/bench_batch_size.py RUN_DIR [--steps 1330 2260] [--batches 256 128 64]
        [--chains 4] [--draws 400]

For each checkpoint step of a finished run whose ``llc.csv`` exists (a trajectory was
estimated), estimates the LLC at that run's own setting (the epsilon, n*beta, localization
and burn-in of its llc.csv) at each minibatch size, with the same seeds, and prints the
estimate with its standard error over chains, MALA acceptance, R-hat, seconds and
milliseconds per chain-step. Run it with one torch thread and nothing else on the core.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from llcgrok.llc import estimate_llc
from llcgrok.rundata import open_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="checkpoint steps (default: the final one)")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    view = open_run(args.run_dir, "cpu")
    setting = pd.read_csv(view.run_dir / "llc.csv").iloc[-1]
    checkpoints = dict(view.checkpoints)
    steps = args.steps or [view.final[0]]
    print("| run | step | batch | estimate ± s.e. | MALA | R-hat | seconds | ms per chain-step |")
    print("|---|---|---|---|---|---|---|---|")
    for step in steps:
        model = view.load(checkpoints[step])
        for batch in args.batches:
            t0 = time.perf_counter()
            est = estimate_llc(model, view.train, loss=view.loss, epsilon=float(setting.epsilon),
                               nbeta=float(setting.nbeta), localization=float(setting.localization),
                               num_chains=args.chains, num_draws=args.draws,
                               num_burnin_steps=int(setting.num_burnin_steps), batch_size=batch, device="cpu",
                               chance_loss=view.chance, quiet=True)
            seconds = time.perf_counter() - t0
            row = est.to_row()
            chain_steps = args.chains * (int(setting.num_burnin_steps) + args.draws)
            print(f"| {view.run_dir.name} | {step} | {batch} | {row['llc_mean']:.3f} ± {row['llc_std'] / args.chains ** 0.5:.3f} "
                  f"| {row['mala_acceptance']:.2f} | {row['r_hat']:.3f} | {seconds:.1f} | {1000 * seconds / chain_steps:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
