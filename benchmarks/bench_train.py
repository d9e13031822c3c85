"""Training throughput: llcgrok's ``train()`` against the plain PyTorch reference loop.

    python benchmarks/bench_train.py            # ~6 min on a 2-core CPU
    python benchmarks/bench_train.py --quick    # ~1.5 min

(a) updates per second of both, side by side in one process, interleaved round by round
    (the order alternates), each round a fresh run of N updates with validation every 10
    updates on 8 x 512 samples; the ratio is the median of the per-round ratios.
    A breakdown shows where the difference comes from, and a numerics check trains both
    from the same initial weights on the same batches and compares the loss curves.
(c) achieved GFLOP/s of a training step against the machine's peak.

Timings on a shared machine are noisy: compare the ratios (measured side by side), not the
absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
import reference  # noqa: E402
from llcgrok import runs  # noqa: E402
from llcgrok.config import ModelConfig, RunConfig  # noqa: E402
from llcgrok.device import resolve_device  # noqa: E402
from llcgrok.model import build_model, count_params, flops_per_example  # noqa: E402
from llcgrok.tasks import make_task  # noqa: E402
from llcgrok.train import evaluate_draws, train  # noqa: E402

SIZES = {"1x64": (1, 64), "2x128": (2, 128), "4x256": (4, 256)}


def make_cfg(size: str, num_steps: int, seed: int = 0, device: str = "cpu") -> RunConfig:
    cfg = RunConfig()
    cfg.model.num_layers, cfg.model.d_model = SIZES[size]
    cfg.train.num_steps = num_steps
    cfg.train.seed = seed
    cfg.train.device = device
    return cfg


def reference_flops_per_example(model_cfg: ModelConfig, num_classes: int, seq_len: int = 4) -> int:
    """Matmul FLOPs of the template's forward: every position through every block, the
    head at every position."""
    d, f, t = model_cfg.d_model, model_cfg.ffn_mult * model_cfg.d_model, seq_len
    block = t * (3 * d * d + d * d + 2 * d * f) + 2 * t * t * d
    return 2 * (model_cfg.num_layers * block + t * d * num_classes)


class Batches:
    """The batch and validation index streams of ``train()`` (same seeds, same calls)."""

    def __init__(self, seed: int, n_train: int, n_val: int, batch_size: int, eval_size: int, device):
        from llcgrok.seeding import BATCHES, EVALUATION, rng_seed

        self.batch_gen = torch.Generator().manual_seed(rng_seed(seed, BATCHES))
        self.eval_gen = torch.Generator().manual_seed(rng_seed(seed, EVALUATION))
        self.n_train, self.n_val, self.batch_size, self.eval_size, self.device = n_train, n_val, batch_size, eval_size, device

    def next_batch(self, step: int) -> torch.Tensor:
        return torch.randint(self.n_train, (self.batch_size,), generator=self.batch_gen).to(self.device)

    def next_val(self) -> torch.Tensor:
        return torch.randint(self.n_val, (self.eval_size,), generator=self.eval_gen).to(self.device)


def reference_run(cfg: RunConfig, device, init_from=None, fused_adam: bool = False) -> reference.ReferenceLoop:
    tc = cfg.train
    task = make_task(cfg.task, seed=tc.seed)
    data = task.to(device)
    model = reference.build_reference(cfg.model, task.vocab_size, task.num_classes, task.seq_len).to(device)
    if init_from is not None:
        reference.copy_llcgrok_to_reference(init_from, model)
    batches = Batches(tc.seed, len(task.train_targets), len(task.val_targets), tc.batch_size, tc.eval_batches * tc.batch_size, device)
    loop = reference.ReferenceLoop(model, data, tc, batches.next_batch, batches.next_val)
    if fused_adam:
        loop.optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2),
                                           weight_decay=tc.weight_decay, fused=True)
        warmup = tc.warmup_steps
        loop.scheduler = torch.optim.lr_scheduler.LambdaLR(loop.optimizer, lambda s: min(s / warmup, 1) if warmup else 1.0)
    return loop


def time_reference(cfg: RunConfig, device) -> float:
    common.sync(device)
    t = time.perf_counter()
    loop = reference_run(cfg, device)
    loop.run(cfg.train.num_steps)
    common.sync(device)
    return time.perf_counter() - t


def time_llcgrok(cfg: RunConfig, device) -> float:
    common.sync(device)
    t = time.perf_counter()
    train(cfg, quiet=True)  # everything: task, model, loop, evaluation, summary
    common.sync(device)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- (a) throughput


def throughput(sizes, steps, rounds, device) -> list[dict]:
    out = []
    for size in sizes:
        cfg = make_cfg(size, steps[size], device=str(device))
        time_reference(make_cfg(size, 10, device=str(device)), device)  # warm both paths up
        time_llcgrok(make_cfg(size, 10, device=str(device)), device)

        def one_round(r):
            order = [("ref", time_reference), ("ours", time_llcgrok)]
            if r % 2:
                order.reverse()
            return {name: fn(cfg, device) for name, fn in order}

        results, note = common.quiet_rounds(one_round, rounds)
        n = cfg.train.num_steps
        ref_rates = [n / t["ref"] for t in results]
        ours_rates = [n / t["ours"] for t in results]
        ratios = [t["ref"] / t["ours"] for t in results]
        task = make_task(cfg.task)
        out.append({
            "size": size,
            "params": count_params(cfg.model, task.vocab_size, task.num_classes),
            "updates": cfg.train.num_steps,
            "ref": common.median(ref_rates),
            "ours": common.median(ours_rates),
            "ratio": common.median(ratios),
            "ratios": ratios,
            "note": note,
        })
        print(f"  {size}: reference {out[-1]['ref']:.1f} upd/s, llcgrok {out[-1]['ours']:.1f} upd/s, "
              f"ratio {out[-1]['ratio']:.2f} (rounds {common.spread(ratios)}; {note})", flush=True)
    return out


def breakdown(size: str, device, repeats: int) -> list[list]:
    """Per-part costs, interleaved: the training update and the evaluation, each side."""
    cfg = make_cfg(size, 10, device=str(device))
    tc = cfg.train
    task = make_task(cfg.task)
    data = task.to(device)
    torch.manual_seed(0)
    ours = build_model(cfg.model, task.vocab_size, task.num_classes).to(device)
    ref = reference.build_reference(cfg.model, task.vocab_size, task.num_classes).to(device)
    reference.copy_llcgrok_to_reference(ours, ref)
    kw = dict(lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    opt_ours = torch.optim.AdamW(ours.parameters(), fused=True, **kw)
    opt_ref = torch.optim.AdamW(ref.parameters(), **kw)
    opt_ref_fused = torch.optim.AdamW(ref.parameters(), fused=True, **kw)
    gen = torch.Generator().manual_seed(0)
    n_train, n_val = len(task.train_targets), len(task.val_targets)
    vidx = torch.randint(n_val, (tc.eval_batches * tc.batch_size,), generator=gen).to(device)

    def batch():
        idx = torch.randint(n_train, (tc.batch_size,), generator=gen).to(device)
        return data.train_inputs[idx], data.train_targets[idx]

    def step_ref(opt):
        x, y = batch()
        opt.zero_grad()
        F.cross_entropy(ref(x)[-1], y).backward()
        opt.step()

    def step_ours(model):
        x, y = batch()
        opt_ours.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt_ours.step()

    @torch.no_grad()
    def eval_ref():
        ref.eval()
        loss = 0.0
        for chunk in vidx.split(tc.batch_size):
            loss += F.cross_entropy(ref(data.val_inputs[chunk])[-1], data.val_targets[chunk]).item()
        ref.train()

    def eval_ours_plain():  # one 4096-row pass over every draw: what train() did before
        with torch.inference_mode():
            out = ours(data.val_inputs[vidx])
            F.cross_entropy(out, data.val_targets[vidx]).item()

    parts = {
        "update: reference model + default AdamW": lambda: step_ref(opt_ref),
        "update: reference model + fused AdamW": lambda: step_ref(opt_ref_fused),
        "update: lean model + fused AdamW (llcgrok)": lambda: step_ours(ours),
        "evaluation: reference, 8 x 512 (per eval)": eval_ref,
        "evaluation: lean model, 4096 rows in one pass (per eval)": eval_ours_plain,
        "evaluation: llcgrok, distinct draws, 512-row chunks (per eval)": lambda: evaluate_draws(ours, data.val_inputs, data.val_targets, vidx),
    }
    for fn in parts.values():
        fn()

    def one_round(r):
        out = {}
        for name, fn in parts.items():
            common.sync(device)
            t = time.perf_counter()
            for _ in range(3):
                fn()
            common.sync(device)
            out[name] = (time.perf_counter() - t) / 3 * 1000
        return out

    results, note = common.quiet_rounds(one_round, repeats)
    return [[name, common.median([r[name] for r in results])] for name in parts], note


# --------------------------------------------------------------------------- numerics


def numerics(size: str, num_steps: int, device) -> list[list]:
    """Same initial weights, same batches, same validation draws: llcgrok's train() against
    the reference loop. Yardsticks: the reference loop against itself with fused AdamW (a
    pure float-rounding change), and against another seed (the scale of a real difference)."""
    cfg = make_cfg(size, num_steps, device=str(device))
    cfg.train.num_checkpoints = 2
    with tempfile.TemporaryDirectory() as tmp:
        ours = train(cfg, tmp, quiet=True).metrics
        init, _ = runs.load_checkpoint(runs.checkpoint_path(tmp, 0), device)  # train()'s own initial weights
    ref_loop = reference_run(cfg, device, init_from=init)
    ref_loop.run(num_steps)
    fused_loop = reference_run(cfg, device, init_from=init, fused_adam=True)
    fused_loop.run(num_steps)
    other = train(make_cfg(size, num_steps, seed=1, device=str(device)), quiet=True).metrics

    import pandas as pd

    ref = pd.DataFrame(ref_loop.rows)
    fused = pd.DataFrame(fused_loop.rows)
    assert list(ref["step"]) == list(ours["step"])
    rows = []
    for column in ("train_loss", "val_loss", "train_acc", "val_acc"):
        rows.append([
            column,
            f"{ref[column].iloc[-1]:.4f} / {ours[column].iloc[-1]:.4f}",
            (ours[column] - ref[column]).abs().max(),
            (fused[column] - ref[column]).abs().max(),
            (other[column] - ref[column]).abs().max(),
        ])
    from llcgrok import metrics as M

    for name, fn in (("steps to memorization", M.steps_to_memorization), ("steps to grokking", M.steps_to_grokking)):
        rows.append([name, f"{fn(ref)} / {fn(ours)}", f"{fn(ours)} vs {fn(ref)}", f"{fn(fused)} vs {fn(ref)}", f"{fn(other)} vs {fn(ref)}"])
    return rows


# --------------------------------------------------------------------------- (c) utilisation


def utilisation(sizes, device, repeats: int, throughput_rows: list[dict]) -> tuple[list[list], str, float]:
    if device.type == "cuda":
        peak_note = "GPU: peak = best fp32 4096^3 matmul (TF32 off)"
        torch.backends.cuda.matmul.allow_tf32 = False
        measured = common.measured_matmul_peak(4096, device=device)
        theoretical = None
    else:
        theoretical, peak_note = common.theoretical_cpu_peak()
        measured = max(common.quiet_rounds(lambda r: common.measured_matmul_peak(2048), 3)[0])
    rows = []
    by_size = {r["size"]: r for r in throughput_rows}
    for size in sizes:
        cfg = make_cfg(size, 10)
        task = make_task(cfg.task)
        data = task.to(device)
        model = build_model(cfg.model, task.vocab_size, task.num_classes).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.5, fused=True)
        gen = torch.Generator().manual_seed(0)

        def step():
            idx = torch.randint(len(task.train_targets), (512,), generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.train_inputs[idx]), data.train_targets[idx]).backward()
            opt.step()

        for _ in range(3):
            step()

        def one_round(r):
            common.sync(device)
            t = time.perf_counter()
            for _ in range(5):
                step()
            common.sync(device)
            return (time.perf_counter() - t) / 5

        times, _ = common.quiet_rounds(one_round, repeats)
        step_s = min(times)  # the least disturbed repeat: a shared machine only ever slows a step down
        fwd = flops_per_example(cfg.model, task.num_classes)
        step_flops = 3 * 512 * fwd  # forward + backward (2x forward) on 512 examples
        gflops = step_flops / step_s / 1e9
        row = [size, step_flops / 1e9, step_s * 1000, gflops]
        if theoretical:
            row.append(f"{100 * gflops / theoretical:.0f}%")
        row.append(f"{100 * gflops / measured:.0f}%")
        if size in by_size:  # the whole loop: 10 updates + one evaluation of 4096 draws, useful FLOPs
            loop_flops = (10 * step_flops + 4096 * fwd) / 10
            row.append(loop_flops * by_size[size]["ours"] / 1e9)
            ref_fwd = reference_flops_per_example(cfg.model, task.num_classes)
            row.append(f"{ref_fwd / fwd:.2f}x")
        else:
            row += ["-", "-"]
        rows.append(row)
    return rows, peak_note, measured, theoretical


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and updates (~1.5 min)")
    parser.add_argument("--sizes", default="1x64,2x128,4x256")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--numerics-steps", type=int, default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    sizes = args.sizes.split(",")
    rounds = args.rounds or (3 if args.quick else 6)
    scale = 0.5 if args.quick else 1.0
    if device.type == "cuda":
        steps = {"1x64": 300, "2x128": 300, "4x256": 300}
    else:
        steps = {"1x64": 200, "2x128": 60, "4x256": 20}
    steps = {k: max(10, int(v * scale) // 10 * 10) for k, v in steps.items()}
    numerics_steps = args.numerics_steps or (100 if args.quick else 300)

    print(f"# bench_train  {common.machine_line(device)}")
    print(f"# command: python benchmarks/bench_train.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"\n(a) training throughput, x_plus_y p=97, batch 512, eval every 10 updates on 8x512 draws; "
          f"{rounds} interleaved rounds per size, each a fresh run of N updates")
    rows = throughput(sizes, steps, rounds, device)
    print()
    print(common.table(
        ["size", "params", "N", "reference upd/s", "llcgrok upd/s", "ratio (median)", "ratio range", "rounds used"],
        [[r["size"], r["params"], r["updates"], r["ref"], r["ours"], r["ratio"], common.spread(r["ratios"]), r["note"]] for r in rows],
    ))

    focus = "2x128" if "2x128" in sizes else sizes[0]
    parts, note = breakdown(focus, device, rounds + 2)
    print(f"\nwhere the time goes at {focus} (ms, median over interleaved rounds: {note})")
    print(common.table(["part", "ms"], parts))

    checks = [(focus, numerics_steps)]
    if not args.quick and "1x64" in sizes:
        checks.append(("1x64", 2500))  # through memorisation and grokking (~1,700 updates at seed 0)
    for size, n in checks:
        print(f"\nnumerics at {size}: same initial weights, batches and validation draws, {n} updates; "
              f"max |difference| over the {n // 10} metric rows")
        print(common.table(
            ["metric", "final ref / llcgrok", "llcgrok vs reference", "yardstick: reference, fused AdamW", "yardstick: seed 1"],
            numerics(size, n, device),
        ))

    util, note, measured, theoretical = utilisation(sizes, device, rounds + 2, rows)
    print(f"\n(c) utilisation of a training step (lean forward + backward + fused AdamW, batch 512; best of "
          f"{rounds + 2} quiet repeats of 5 steps)")
    print(f"peak, theoretical: {note}")
    print(f"peak, measured: best fp32 {'2048' if device.type == 'cpu' else '4096'}^3 matmul = {measured:.0f} GFLOP/s")
    headers = ["size", "GFLOP/step", "ms/step", "GFLOP/s"]
    if theoretical:
        headers.append("of theoretical")
    headers += ["of measured matmul", "whole loop GFLOP/s (incl. eval)", "reference does x FLOPs"]
    print(common.table(headers, util))


if __name__ == "__main__":
    main()
