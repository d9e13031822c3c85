"""Random-number streams of a run: one seed per purpose, derived from the run seed.

Every task's trainer draws its initial weights, its batches and its evaluation samples from
generators of their own, so that recording something new (fingerprints, a perturbation)
never shifts what training draws.
"""

INIT, BATCHES, EVALUATION, PROBES, PERTURBATION = range(5)  # streams; sequence tasks: EVALUATION is the probe set


def rng_seed(seed: int, stream: int) -> int:
    """The generator seed of ``stream`` for run seed ``seed``."""
    return seed * 1_000_003 + stream
