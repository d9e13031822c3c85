"""Seeds as one vectorised ensemble against the same seeds trained one after another.

    python benchmarks/bench_ensemble.py                   # CPU, 5 seeds, 1x64 and 2x128
    python benchmarks/bench_ensemble.py --device cuda     # GPU: all three sizes
    python benchmarks/bench_ensemble.py --quick

Each round times ``train_ensemble(cfg, seeds, vectorize=True)`` (the vectorised path, forced:
on a CPU the default trains the seeds one after another, because this measures slower there) and ``[train(cfg seed s) for s in seeds]``
side by side (the order alternates between rounds); the speed-up is the median of the
per-round ratios. The agreement column compares the two paths' per-seed curves (same
seeds, same batches): the largest |difference| in train and validation loss over all seeds
and metric rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from llcgrok.config import RunConfig  # noqa: E402
from llcgrok.device import resolve_device  # noqa: E402
from llcgrok.ensemble import seed_config, train_ensemble  # noqa: E402
from llcgrok.train import train  # noqa: E402

SIZES = {"1x64": (1, 64), "2x128": (2, 128), "4x256": (4, 256)}


def make_cfg(size: str, num_steps: int, device: torch.device) -> RunConfig:
    cfg = RunConfig()
    cfg.model.num_layers, cfg.model.d_model = SIZES[size]
    cfg.train.num_steps = num_steps
    cfg.train.device = str(device)
    return cfg


def run_sequential(cfg, seeds, device):
    common.sync(device)
    t = time.perf_counter()
    results = [train(seed_config(cfg, s), quiet=True) for s in seeds]
    common.sync(device)
    return time.perf_counter() - t, results


ATTENTION = "auto"


def run_ensemble(cfg, seeds, device):
    common.sync(device)
    t = time.perf_counter()
    results = train_ensemble(cfg, seeds, vectorize=True, attention=ATTENTION)
    common.sync(device)
    return time.perf_counter() - t, results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default=None, help="default: 1x64,2x128 on a CPU, all three on a GPU")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--attention", default="auto", choices=["auto", "math", "fused"],
                        help="the ensemble's attention path under vmap")
    args = parser.parse_args(argv)
    global ATTENTION
    ATTENTION = args.attention
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    sizes = (args.sizes or ("1x64,2x128,4x256" if gpu else "1x64,2x128")).split(",")
    rounds = args.rounds or (2 if args.quick else 3)
    steps = {"1x64": 300, "2x128": 300, "4x256": 200} if gpu else {"1x64": 100, "2x128": 30, "4x256": 10}
    if args.quick:
        steps = {k: max(10, v // 2 // 10 * 10) for k, v in steps.items()}
    seeds = list(range(args.seeds))

    print(f"# bench_ensemble  {common.machine_line(device)}")
    print(f"# command: python benchmarks/bench_ensemble.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"{len(seeds)} seeds, vectorised ensemble (forced), attention path {ATTENTION!r}, x_plus_y p=97, batch 512, eval every 10 updates on 8x512 draws; {rounds} interleaved rounds\n")
    rows = []
    for size in sizes:
        cfg = make_cfg(size, steps[size], device)
        warm = make_cfg(size, 10, device)
        run_sequential(warm, seeds[:1], device)
        run_ensemble(warm, seeds, device)

        def one_round(r):
            if r % 2 == 0:
                ts, seq = run_sequential(cfg, seeds, device)
                te, ens = run_ensemble(cfg, seeds, device)
            else:
                te, ens = run_ensemble(cfg, seeds, device)
                ts, seq = run_sequential(cfg, seeds, device)
            return ts, te, seq, ens

        results, note = common.quiet_rounds(one_round, rounds)
        seq_t = [r[0] for r in results]
        ens_t = [r[1] for r in results]
        ratios = [r[0] / r[1] for r in results]
        seq, ens = results[-1][2], results[-1][3]
        diff = max(
            float((a.metrics[c] - b.metrics[c]).abs().max()) for a, b in zip(seq, ens) for c in ("train_loss", "val_loss")
        )
        n = cfg.train.num_steps
        rows.append([size, n, common.median(seq_t), common.median(ens_t), len(seeds) * n / common.median(seq_t),
                     len(seeds) * n / common.median(ens_t), common.median(ratios), common.spread(ratios), diff, note])
        print(f"  {size}: sequential {rows[-1][2]:.2f} s, ensemble {rows[-1][3]:.2f} s, speed-up {rows[-1][6]:.2f} "
              f"({note})", flush=True)
    print()
    print(common.table(
        ["size", "updates", "sequential s", "ensemble s", "seq seed-upd/s", "ens seed-upd/s", "speed-up (median)",
         "range", "max |d loss|", "rounds used"],
        rows,
    ))


if __name__ == "__main__":
    main()
