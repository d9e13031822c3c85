"""LLC estimation: known learning coefficients, determinism, diagnostics, trajectories."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from problems import regression, train_tiny_run

from llcgrok import runs
from llcgrok.config import LLCConfig
from llcgrok.llc import (
    AllChainsFailed,
    LLCError,
    default_nbeta,
    estimate_llc,
    summarize_chains,
)
from llcgrok.trajectory import run_trajectory


class _Product(torch.nn.Module):
    """y = a * b * x at a = b = 0 with data from y = noise: K(w) ~ (ab)^2, lambda = 1/2."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(1))
        self.b = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.a * self.b * x


SAMPLER = dict(localization=1.0, num_chains=4, batch_size=500, seed=0)


def test_regular_model_has_llc_d_over_2():
    model, data = regression()
    # The trend test covers every recorded draw, so the rise from w* is burnt in first
    # (without it the trace is still rising; measured on 8 seeds: all healthy with 400 steps).
    est = estimate_llc(model, data, loss="mse", epsilon=1e-4, num_draws=800, num_burnin_steps=400, **SAMPLER)
    d = sum(p.numel() for p in model.parameters())
    assert est.mean == pytest.approx(d / 2, rel=0.15), est
    assert est.nbeta == pytest.approx(5000 / math.log(5000))
    assert est.diagnostics["num_diverged"] == 0 and est.healthy


def test_singular_model_has_llc_below_its_regular_count():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5000, 1, generator=g)
    y = 0.5 * torch.randn(5000, 1, generator=g)
    # This chain relaxes slowly from a = b = 0: burn-in, and 8 chains, keep the estimate
    # within the bounds whatever the seed (measured: 0.32-0.47 over 6 seeds).
    est = estimate_llc(_Product(), (x, y), loss="mse", epsilon=3e-4, num_draws=1000, num_burnin_steps=1000,
                       **{**SAMPLER, "num_chains": 8})
    # A regular 2-parameter model would give 1.0; the singularity halves it (lambda = 1/2).
    assert 0.3 < est.mean < 0.7, est


def test_same_seed_same_numbers_and_cores_do_not_change_them():
    model, data = regression(n=1000)
    kwargs = dict(loss="mse", epsilon=1e-4, num_draws=30, localization=1.0, num_chains=2, batch_size=100)
    a = estimate_llc(model, data, seed=3, **kwargs)
    b = estimate_llc(model, data, seed=3, **kwargs)
    c = estimate_llc(model, data, seed=4, **kwargs)
    np.testing.assert_array_equal(a.loss_trace, b.loss_trace)
    assert not np.array_equal(a.loss_trace, c.loss_trace)
    d = estimate_llc(model, data, seed=3, cores=2, **kwargs)
    np.testing.assert_allclose(a.loss_trace, d.loss_trace, rtol=1e-5)


def test_estimate_leaves_the_model_untouched_and_records_settings():
    model, data = regression(n=1000)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    est = estimate_llc(model, data, loss="mse", epsilon=1e-4, nbeta=50.0, num_draws=20, localization=1.0, num_chains=2, batch_size=100)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    row = est.to_row()
    assert row["nbeta"] == 50.0 and row["epsilon"] == 1e-4 and row["num_draws"] == 20
    assert est.loss_trace.shape == (2, 20)
    frame = est.traces_frame()
    assert len(frame) == 40 and set(frame.columns) >= {"chain", "draw", "loss", "init_loss"}


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(epsilon=-1e-4), "epsilon must be > 0"),
        (dict(epsilon=0.0), "epsilon must be > 0"),
        (dict(nbeta=float("nan")), "nbeta"),
        (dict(num_chains=0), "num_chains must be a positive integer"),
        (dict(num_draws=2.5), "num_draws must be a positive integer"),
        (dict(localization=-1.0), "localization must be >= 0"),
    ],
)
def test_bad_sampler_settings_are_named(bad, message):
    model, data = regression(n=200)
    kwargs = dict(loss="mse", epsilon=1e-4, num_draws=5, localization=1.0, num_chains=1, batch_size=50)
    kwargs.update(bad)
    with pytest.raises(ValueError, match=message):
        estimate_llc(model, data, **kwargs)


def test_a_step_far_too_large_fails_every_chain_with_advice():
    model, data = regression(n=1000)
    with pytest.raises(AllChainsFailed, match="Lower epsilon"):
        estimate_llc(model, data, loss="mse", epsilon=10.0, num_draws=30, localization=1.0, num_chains=2, batch_size=100)


def test_summarize_chains_flags_what_it_should():
    rng = np.random.default_rng(0)
    flat = 1.0 + 0.01 * rng.standard_normal((2, 100))
    mean, std, per_chain, diag = summarize_chains(flat, init_loss=0.99, nbeta=100.0, num_params=50)
    assert mean == pytest.approx(100 * (flat.mean() - 0.99))
    assert diag["healthy"] and diag["converged"] and diag["num_diverged"] == 0
    rising = 1.0 + np.linspace(0, 1, 100)[None, :].repeat(2, 0)
    assert not summarize_chains(rising, 0.99, 100.0, 1000)[3]["converged"]
    broken = flat.copy()
    broken[1, 40] = np.nan
    mean, _, per_chain, diag = summarize_chains(broken, 0.99, 100.0, 50)
    assert diag["num_diverged"] == 1 and np.isnan(per_chain[1]) and mean == pytest.approx(per_chain[0])
    assert "draw 40" in diag["failure_reasons"][0]
    escaped = summarize_chains(np.full((2, 50), 4.0), 0.1, 10.0, 1000, chance_loss=math.log(97))[3]
    assert escaped["escaped"] and not escaped["healthy"]
    below = summarize_chains(flat, init_loss=1.5, nbeta=100.0, num_params=50)[3]
    assert below["negative"] and below["frac_below_init"] == 1.0


def test_default_nbeta_is_n_over_log_n():
    assert default_nbeta(4704) == pytest.approx(4704 / math.log(4704))


# --------------------------------------------------------------------------- trajectories


def _llc_cfg(**overrides):
    cfg = LLCConfig(epsilon=1e-4, nbeta=None, localization=100.0, num_chains=2, num_draws=12, batch_size=128, calibrate=False)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture
def tiny_run(tmp_path):
    return train_tiny_run(tmp_path / "run")


def test_trajectory_covers_every_checkpoint_and_resumes(tiny_run):
    frame = run_trajectory(tiny_run, _llc_cfg(), quiet=True)
    steps = [s for s, _ in runs.list_checkpoints(tiny_run)]
    assert frame["step"].tolist() == steps
    assert frame[["train_acc", "val_acc", "llc_mean"]].notna().all().all()
    assert (frame["settings_source"] == "config").all()
    on_disk = pd.read_csv(tiny_run / "llc.csv")
    assert on_disk["step"].tolist() == steps

    # An interruption after two checkpoints: the rerun redoes only the missing ones, and
    # the numbers match (per-checkpoint seeds do not depend on what ran before).
    on_disk.iloc[:2].to_csv(tiny_run / "llc.csv", index=False)
    again = run_trajectory(tiny_run, _llc_cfg(), quiet=True)
    np.testing.assert_allclose(again["llc_mean"], frame["llc_mean"], rtol=1e-6)


def test_checkpoints_batched_together_give_the_rows_of_one_at_a_time(tiny_run, tmp_path):
    """llc.checkpoint_batch: every checkpoint's chains in one batched computation, each
    localised at its own weights, with the seeds one call per checkpoint gives them."""
    import shutil

    one = run_trajectory(tiny_run, _llc_cfg(checkpoint_batch=1), quiet=True)
    other = tmp_path / "again"
    shutil.copytree(tiny_run, other)
    (other / "llc.csv").unlink()
    (other / runs.TRACES_NPZ).unlink(missing_ok=True)
    grouped = run_trajectory(other, _llc_cfg(checkpoint_batch=3), quiet=True)  # groups of 3, and a rest
    assert len(one) > 3 and len(one) % 3
    np.testing.assert_allclose(grouped["llc_mean"], one["llc_mean"], rtol=1e-6)
    np.testing.assert_allclose(grouped["mala_acceptance"], one["mala_acceptance"], rtol=1e-6)
    assert (grouped["sampler"] == "batched").all()


def test_estimate_llc_many_localises_each_model_at_its_own_weights():
    from llcgrok.llc import estimate_llc_many

    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    models = []
    for scale in (0.0, 0.5, 1.0):
        m = torch.nn.Linear(3, 1)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]) * scale)
            m.bias.zero_()
        models.append(m)
    kw = dict(loss="mse", epsilon=1e-4, localization=10.0, num_chains=2, num_draws=30, num_burnin_steps=10, batch_size=50, seed=3)
    many = estimate_llc_many(models, (x, y), **kw)
    for model, est in zip(models, many):
        single = estimate_llc(model, (x, y), **kw)
        np.testing.assert_allclose(est.loss_trace, single.loss_trace, rtol=1e-6)
        assert est.init_loss == single.init_loss
    assert many[0].init_loss > many[2].init_loss  # each chain set sits at its own model


def test_trajectory_refuses_to_mix_sampler_settings(tiny_run):
    run_trajectory(tiny_run, _llc_cfg(), quiet=True)
    with pytest.raises(LLCError, match="other sampler settings"):
        run_trajectory(tiny_run, _llc_cfg(epsilon=3e-4), quiet=True)


def test_trajectory_of_an_untrained_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_trajectory(tmp_path, _llc_cfg(), quiet=True)
