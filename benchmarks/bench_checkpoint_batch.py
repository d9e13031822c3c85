"""Several checkpoints' chains as one batched computation, against one checkpoint at a time.

    python benchmarks/bench_checkpoint_batch.py [--sizes 1x32 1x64 2x64] [--checkpoints 16]
        [--chains 2] [--draws 100] [--burnin 400] [--groups 1 4 8 16]

For each size: a short run with ``--checkpoints`` checkpoints, then the LLC of all of them
at the quick preset's trajectory settings (2 chains x (400 burn-in + 100 draws), batch 256 or ``--batch``),
with ``llc.checkpoint_batch`` = each of ``--groups`` (1 is one ``estimate_llc`` call per
checkpoint). Prints seconds for all checkpoints, chain-steps per second, the speed-up over
one at a time, and whether every loss trace equals the one-at-a-time trace bit for bit.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py, beside this script)

from llcgrok import runs  # noqa: E402
from llcgrok.config import RunConfig  # noqa: E402
from llcgrok.llc import estimate_llc, estimate_llc_many  # noqa: E402
from llcgrok.tasks import make_task  # noqa: E402
from llcgrok.train import train  # noqa: E402


def _run(size: str, checkpoints: int, root: Path):
    layers, width = (int(v) for v in size.split("x"))
    cfg = RunConfig()
    cfg.model.num_layers, cfg.model.d_model = layers, width
    cfg.train.num_steps, cfg.train.checkpoint_schedule, cfg.train.num_checkpoints = 300, "linear", checkpoints - 1
    cfg.train.device = "cpu"
    train(cfg, root / size, quiet=True)
    task = make_task(cfg.task, seed=cfg.train.seed)
    models = [runs.load_checkpoint(path)[0] for _, path in runs.list_checkpoints(root / size)]
    return models, (task.train_inputs, task.train_targets)


def _time_group(models, data, settings, group: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = []
    for first in range(0, len(models), group):
        chunk = models[first:first + group]
        out += [estimate_llc(chunk[0], data, **settings)] if len(chunk) == 1 else estimate_llc_many(chunk, data, **settings)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1x32", "1x64", "2x64"])
    parser.add_argument("--checkpoints", type=int, default=16)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--burnin", type=int, default=400)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--batch", type=int, default=256, help="the sampler's minibatch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# bench_checkpoint_batch  {common.machine_line()}, 1 torch thread")
    print(f"# command: python benchmarks/bench_checkpoint_batch.py {' '.join(sys.argv[1:])}".rstrip())
    root = Path(tempfile.mkdtemp(prefix="bench_ckpt_batch_"))
    rows = []
    for size in args.sizes:
        models, data = _run(size, args.checkpoints, root)
        n = len(data[1])
        settings = dict(epsilon=1e-7, nbeta=n / math.log(n), localization=1e5, num_chains=args.chains,
                        num_draws=args.draws, num_burnin_steps=args.burnin, batch_size=args.batch, seed=0)
        chain_steps = len(models) * args.chains * (args.draws + args.burnin)
        reference = None
        for group in args.groups:
            common.wait_for_quiet(max_wait=30)
            seconds, estimates = _time_group(models, data, settings, group)
            traces = [e.loss_trace for e in estimates]
            reference = reference or (seconds, traces)
            same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(traces, reference[1]))
            rows.append([size, len(models), group, f"{seconds:.1f}", f"{chain_steps / seconds:.0f}",
                         f"{reference[0] / seconds:.2f}x", "yes" if same else "no"])
            print(rows[-1], flush=True)
    print(common.table(["size", "checkpoints", "checkpoint_batch", "seconds", "chain-steps/s", "speed-up", "bit-identical"], rows))


if __name__ == "__main__":
    main()
