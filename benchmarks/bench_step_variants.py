"""Variants of one training step that llcgrok did or did not adopt, measured.

    python benchmarks/bench_step_variants.py                 # CPU: eager vs torch.compile
    python benchmarks/bench_step_variants.py --device cuda   # GPU: + CUDA graphs, ensemble attention paths

For each size: the llcgrok step (lean model, fused AdamW, batch 512) eager and under
``torch.compile`` (default mode; on a GPU also ``reduce-overhead``, i.e. CUDA graphs),
with the compile time and the number of updates after which compiling pays off. On a GPU
also the vectorised ensemble's forward+backward with the fused attention kernel against
the math path (whether vmap has a batching rule for the kernel or loops over members).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
from llcgrok.config import ModelConfig  # noqa: E402
from llcgrok.device import resolve_device  # noqa: E402
from llcgrok.model import build_model  # noqa: E402

SIZES = {"1x64": (1, 64), "2x128": (2, 128), "4x256": (4, 256)}


def step_fn(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss


def time_variant(size, variant, device, steps):
    layers, d = SIZES[size]
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_layers=layers, d_model=d, num_heads=4), 99, 97).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.5, fused=True)
    if variant == "eager":
        fwd = model
    elif variant == "compile":
        fwd = torch.compile(model)
    else:
        fwd = torch.compile(model, mode=variant)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.randint(0, 99, (512, 4), device=device, generator=gen),
                torch.randint(0, 97, (512,), device=device, generator=gen)) for _ in range(8)]
    common.sync(device)
    t = time.perf_counter()
    for i in range(3):
        step_fn(fwd, opt, *batches[i])
    common.sync(device)
    first = time.perf_counter() - t
    times = []
    for r in range(5):
        common.sync(device)
        t = time.perf_counter()
        for i in range(steps):
            step_fn(fwd, opt, *batches[i % 8])
        common.sync(device)
        times.append((time.perf_counter() - t) / steps * 1000)
    return first, common.median(times)


def ensemble_attention(device, size="1x64", members=5, steps=20):
    from llcgrok.ensemble import EnsembleModel

    layers, d = SIZES[size]
    torch.manual_seed(0)
    models = [build_model(ModelConfig(num_layers=layers, d_model=d, num_heads=4), 99, 97).to(device) for _ in range(members)]
    ens = EnsembleModel(models)
    x = torch.randint(0, 99, (members, 512, 4), device=device)
    y = torch.randint(0, 97, (members, 512), device=device)
    out = []
    for name in ("fused kernel", "math path (default)"):
        try:
            out.append(_time_ensemble(ens, x, y, name, device, steps))
        except RuntimeError as exc:  # e.g. CUDA: "LSE is not correctly aligned" under vmap
            out.append([name, float("nan"), f"fails: {str(exc).splitlines()[0][:60]}"])
    return out


def _time_ensemble(ens, x, y, name, device, steps):
    import contextlib

    from llcgrok.device import math_attention

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = math_attention() if name.startswith("math path") else contextlib.nullcontext()
        with ctx:
            fwd = ens._forward
            for _ in range(3):
                loss = F.cross_entropy(fwd(ens.params, ens.buffers, x).flatten(0, 1), y.flatten())
                loss.backward()
            common.sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                loss = F.cross_entropy(fwd(ens.params, ens.buffers, x).flatten(0, 1), y.flatten())
                loss.backward()
            common.sync(device)
    fallback = any("performance drop" in str(w.message) for w in caught)
    return [name, (time.perf_counter() - t) / steps * 1000, "yes" if fallback else "no"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1x64,2x128")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    print(f"# bench_step_variants  {common.machine_line(device)}")
    print(f"# command: python benchmarks/bench_step_variants.py {' '.join(sys.argv[1:])}".rstrip())
    variants = ["eager", "compile"] + (["reduce-overhead"] if gpu else [])
    rows = []
    for size in args.sizes.split(","):
        steps = 50 if gpu else (30 if size == "1x64" else 10)
        eager_ms = None
        for variant in variants:
            with common.Foreign() as meter:
                first, ms = time_variant(size, variant, device, steps)
            if variant == "eager":
                eager_ms = ms
                pays = "-"
            else:
                gain = eager_ms - ms
                pays = f"{first / (gain / 1000):.0f}" if gain > 0 else "never"
            rows.append([size, variant, first, ms, f"{eager_ms / ms:.2f}x", pays, f"{meter.cores:.2f}"])
            print(f"  {size} {variant}: first 3 steps {first:.1f} s, {ms:.2f} ms/step", flush=True)
    print()
    print(common.table(["size", "variant", "first 3 steps s (incl. compile)", "ms/step", "vs eager", "pays off after N updates",
                        "others' cores"], rows))
    if gpu:
        print("\nvectorised ensemble (5 members, 1x64, batch 512): forward+backward per step")
        print(common.table(["attention", "ms/step", "vmap falls back to a loop"], ensemble_attention(device)))


if __name__ == "__main__":
    main()
