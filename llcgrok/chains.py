"""Running SGLD chains: the two paths (the batched sampler, devinterp's loop), the choice
between them, and the persistent process pool that runs devinterp's loop (or batched groups
of chains) on several CPU cores. :mod:`llcgrok.llc` turns their traces into an estimate.
"""

from __future__ import annotations

import multiprocessing.process
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import numpy as np
import torch
from tqdm.auto import tqdm

from . import _devinterp, sgld_batched


class LLCError(RuntimeError):
    """LLC estimation could not produce a number; the message says what to change."""


# --------------------------------------------------------------------------- parallel chains

_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def _main_unimportable() -> str | None:
    """The main module's path when a spawned worker could not re-run it, else None.

    spawn re-runs ``__main__.__file__`` in every worker process (the rule below mirrors
    multiprocessing.spawn.get_preparation_data); a script read from standard input
    (``python - <<EOF``) has ``'<stdin>'`` there, and every worker would die on it.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(getattr(main, "__spec__", None), "name", None) or path is None:
        return None  # python -m (re-imported by name); python -c, a REPL, Jupyter (nothing to re-run)
    if os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None
    if not os.path.isabs(path) and multiprocessing.process.ORIGINAL_DIR is not None:
        path = os.path.join(multiprocessing.process.ORIGINAL_DIR, path)
    return None if os.path.isfile(path) else getattr(main, "__file__")


def _get_pool(cores: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size != cores:
        shutdown_workers()
        _pool = ProcessPoolExecutor(max_workers=cores, mp_context=get_context("spawn"), initializer=_devinterp.init_worker)
        _pool_size = cores
    return _pool


def shutdown_workers() -> None:
    """Stop the chain worker processes (started on the first ``cores > 1`` estimate and
    kept for the next ones; they also stop when the interpreter exits)."""
    global _pool, _pool_size
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
    _pool, _pool_size = None, 0


def effective_cores(cores: int, num_chains: int, device: torch.device) -> int:
    """Processes actually used: at most one per chain and per CPU; accelerators run
    chains one after another (the device is the parallel resource)."""
    if device.type != "cpu":
        return 1
    return max(1, min(int(cores), num_chains, os.cpu_count() or 1))


def _run_chains(model, data, evaluate, specs, cores: int, quiet: bool) -> list:
    main = _main_unimportable() if cores > 1 else None
    if main is not None:
        warnings.warn(f"cores={cores}: chain worker processes cannot re-run the main module {main!r} (a script read "
                      "from standard input?), so the chains run in this process; save the script to a file, with "
                      "its entry point under if __name__ == '__main__':, to use several processes", RuntimeWarning,
                      stacklevel=3)
        cores = 1
    bar = tqdm(total=len(specs), desc="chains", unit="chain", disable=quiet, leave=False)
    try:
        if cores == 1:
            results = []
            for spec in specs:
                results.append(_devinterp.sample_chain(model, data, evaluate, spec))
                bar.update(1)
            return results
        payload = _devinterp.pack_job(model, data, evaluate)
        pool = _get_pool(cores)
        try:
            futures = [pool.submit(_devinterp.run_chain_payload, payload, spec) for spec in specs]
            results = []
            for future in futures:
                results.append(future.result())
                bar.update(1)
            return results
        except BrokenProcessPool:
            shutdown_workers()
            raise LLCError("a chain worker process died (out of memory?); try cores=1") from None
    finally:
        bar.close()


def choose_sampler(sampler: str, device: torch.device) -> str:
    """The path ``sampler="auto"`` takes (an explicit "batched" or "devinterp" is kept).

    Batched everywhere: all chains advance as one computation. Measured on a 2-core CPU
    (docs/performance.md, "Batched SGLD against devinterp's loop"; 4 chains x 200 draws,
    batch 256) it took 3.01 s per 1x64 checkpoint in one process and 2.68 s with cores=2,
    against 4.74 s for devinterp's loop in llcgrok's pool. A model the batched path refuses
    falls back to devinterp's loop (:func:`_sample`). Accelerators: batched too, not
    measured here."""
    if sampler != "auto":
        return sampler
    return "batched"


_fallbacks_warned: set = set()


def _sample(work, dataset, evaluate, specs, cores: int, quiet: bool, path: str, requested: str) -> tuple[list, str]:
    """The chains' results on ``path``, and the path that produced them: a model the
    batched sampler refuses runs on devinterp's loop (warned once per reason), unless
    "batched" was asked for explicitly."""
    if path == "batched":
        try:
            return _run_batched(work, dataset, evaluate, specs, cores), "batched"
        except sgld_batched.BatchingUnsupported as exc:
            if requested == "batched":
                raise LLCError(f"sampler='batched' cannot run this model: {exc}; use sampler='auto' or 'devinterp'") from exc
            if str(exc) not in _fallbacks_warned:
                _fallbacks_warned.add(str(exc))
                warnings.warn(f"the batched SGLD sampler cannot run this model ({exc}); using devinterp's loop",
                              RuntimeWarning, stacklevel=4)
    return _run_chains(work, dataset, evaluate, specs, cores, quiet), "devinterp"


def _run_batched(model, data, evaluate, specs, cores: int) -> list:
    """The batched sampler; with ``cores > 1``, the chains split between that many worker
    processes (one torch thread each), each running its share as one batched computation.
    A chain's numbers depend on its seed, not on the split."""
    if cores > 1 and _main_unimportable() is not None:
        cores = 1  # _run_chains explains why when the fallback gets there; batched chains just run here
    if cores == 1:
        return sgld_batched.sample_chains(model, data, evaluate, specs)
    groups = [list(range(len(specs)))[i::cores] for i in range(cores)]
    payload = _devinterp.pack_job(model, data, evaluate)
    pool = _get_pool(cores)
    try:
        futures = [pool.submit(sgld_batched.run_payload, payload, [specs[i] for i in group]) for group in groups]
        results: list = [None] * len(specs)
        for group, future in zip(groups, futures):
            for i, result in zip(group, future.result()):
                results[i] = result
        return results
    except BrokenProcessPool:
        shutdown_workers()
        raise LLCError("a chain worker process died (out of memory?); try cores=1") from None


def chain_seeds(seed: int, num_chains: int) -> list[int]:
    """Per-chain seeds from one seed (the scheme devinterp uses for an integer seed)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(num_chains)]
