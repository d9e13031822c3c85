"""The batched SGLD sampler against devinterp's loop (the reference path).

Fed the same noise and the same minibatches, the batched chains must follow devinterp's
step for step, to float rounding (float64: 1e-9; float32: 1e-4), over 120 steps, for
both update rules and with a localization; on independent seeds the two paths' LLC
estimates must agree within their Monte Carlo error.
"""

import ast
import inspect
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from problems import regression

from llcgrok import _devinterp, chains, llc, sgld_batched
from llcgrok.config import ModelConfig
from llcgrok.model import build_model

BURNIN, DRAWS = 20, 100  # 120 steps, 100 of them recorded


def _mlp(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=g, dtype=dtype)
    y = torch.randn(400, 2, generator=g, dtype=dtype)
    return model, TensorDataset(x, y), llc.make_evaluate("mse")


def _transformer(dtype):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_layers=1, d_model=16, num_heads=2), 15, 13).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 15, (300, 4), generator=g)
    y = torch.randint(0, 13, (300,), generator=g)
    return model, TensorDataset(x, y), llc.make_evaluate("ce")


class _Replay:
    """Stands in for ``torch.normal`` in devinterp's optimizers: hands out one chain's
    recorded noise, parameter by parameter, step by step."""

    def __init__(self, noise: torch.Tensor, sizes: list):
        self.noise, self.sizes = noise, sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.step = self.param = 0

    def __call__(self, *args, size=None, **kwargs):
        n = self.sizes[self.param]
        assert math.prod(size) == n, "devinterp drew noise for another parameter than expected"
        out = self.noise[self.step, self.offsets[self.param]:self.offsets[self.param] + n].reshape(size).clone()
        self.param += 1
        if self.param == len(self.sizes):
            self.param, self.step = 0, self.step + 1
        return out


def _both_paths(monkeypatch, model, data, evaluate, specs):
    """Both paths on the same recorded noise: (reference results, batched results)."""
    sizes = [p.numel() for p in model.parameters()]
    steps = specs[0].num_burnin_steps + specs[0].num_draws
    noise = torch.randn(len(specs), steps, sum(sizes), generator=torch.Generator().manual_seed(7))  # float32, as devinterp draws
    reference = []
    for c, spec in enumerate(specs):
        with monkeypatch.context() as m:
            m.setattr(torch, "normal", _Replay(noise[c], sizes))
            reference.append(_devinterp.sample_chain(model, data, evaluate, spec))
    position = [0]

    def replay(generators, n, size, dtype, device):
        assert size == sum(sizes) and len(generators) == len(specs)
        out = noise[:, position[0]:position[0] + n].to(dtype=dtype, device=device)
        position[0] += n
        return out

    with monkeypatch.context() as m:
        m.setattr(sgld_batched, "draw_noise", replay)
        m.setattr(sgld_batched, "NOISE_BLOCK_BYTES", 4000)  # several noise blocks per run
        batched = sgld_batched.sample_chains(model, data, evaluate, specs)
    assert position[0] == steps
    return reference, batched


def _specs(method, localization, epsilon, nbeta, batch_size, num_chains=3, **kw):
    return [
        _devinterp.ChainSpec(epsilon=epsilon, nbeta=nbeta, localization=localization, num_draws=kw.get("draws", DRAWS),
                             num_burnin_steps=kw.get("burnin", BURNIN), batch_size=batch_size, seed=s, method=method)
        for s in llc.chain_seeds(0, num_chains)
    ]


@pytest.mark.parametrize("method", ["sgld", "rmsprop_sgld"])
@pytest.mark.parametrize("problem, dtype, rtol", [
    (_mlp, torch.float64, 1e-9),
    (_transformer, torch.float64, 1e-9),
    (_transformer, torch.float32, 1e-4),
])
def test_follows_devinterp_step_for_step(monkeypatch, method, problem, dtype, rtol):
    model, data, evaluate = problem(dtype)
    specs = _specs(method, localization=50.0, epsilon=1e-3, nbeta=30.0, batch_size=32)
    reference, batched = _both_paths(monkeypatch, model, data, evaluate, specs)
    for r, b in zip(reference, batched):
        assert r.failed_at is None and b.failed_at is None
        np.testing.assert_allclose(b.losses, r.losses, rtol=rtol, atol=0)
        # Not vacuous: the losses move by far more than the tolerance over the chain.
        assert np.ptp(r.losses) > 1e3 * rtol * np.abs(r.losses).max()
        # MALA: devinterp stores float32 (and rmsprop's distance metric is float32).
        assert np.isnan(b.mala[:2]).all() and np.isnan(r.mala[:2]).all()
        mala_tol = 1e-5 if (dtype == torch.float64 and method == "sgld") else 1e-3 if dtype == torch.float64 else 2e-2
        np.testing.assert_allclose(b.mala[2:], r.mala[2:], atol=mala_tol, rtol=0)
        assert 0 < np.mean(r.mala[2:]) < 1 and np.ptp(r.mala[2:]) > 10 * mala_tol  # the rates are informative


def test_non_finite_chain_stops_where_the_reference_stops(monkeypatch):
    model, data, evaluate = _mlp(torch.float64)
    specs = _specs("sgld", localization=1.0, epsilon=0.5, nbeta=1000.0, batch_size=40, burnin=0, draws=60)
    reference, batched = _both_paths(monkeypatch, model, data, evaluate, specs)
    for r, b in zip(reference, batched):
        assert r.failed_at is not None and b.failed_at == r.failed_at
        np.testing.assert_array_equal(np.isnan(b.losses), np.isnan(r.losses))
        np.testing.assert_array_equal(np.isnan(b.mala), np.isnan(r.mala))
        finite = np.isfinite(r.losses)
        np.testing.assert_allclose(b.losses[finite], r.losses[finite], rtol=1e-6)


def test_minibatches_are_the_reference_loaders():
    _, data, _ = _mlp(torch.float64)
    spec = _specs("sgld", 1.0, 1e-3, 10.0, batch_size=64)[1]
    steps = 3 * (400 // 64) + 2  # three passes and a bit: reshuffled each pass, as devinterp cycles
    batches = sgld_batched._IndexBatches(data, [spec], steps, torch.device("cpu"))
    loader = _devinterp.make_loader(data, 64, spec.seed)

    def cycle():  # devinterp.utils.cycle: the same loader, iterated again
        while True:
            yield from loader

    reference = cycle()
    for step in range(steps):
        expected, got = next(reference), batches(step)
        assert torch.equal(got[0][0], expected[0]) and torch.equal(got[1][0], expected[1])


def test_estimates_agree_with_devinterp_on_independent_seeds():
    model, data = regression(n=2000)
    kwargs = dict(loss="mse", epsilon=1e-4, localization=1.0, num_chains=6, num_draws=200, num_burnin_steps=100, batch_size=200)
    a = llc.estimate_llc(model, data, sampler="batched", seed=1, **kwargs)
    b = llc.estimate_llc(model, data, sampler="devinterp", seed=2, **kwargs)
    assert a.diagnostics["sampler"] == "batched" and b.diagnostics["sampler"] == "devinterp"
    se = math.sqrt(np.var(a.per_chain, ddof=1) / 6 + np.var(b.per_chain, ddof=1) / 6)
    assert abs(a.mean - b.mean) < 4 * se, (a.mean, b.mean, se)
    assert a.mean == pytest.approx(4.0, rel=0.25)  # d/2 for this regular model: both sample the right posterior


def test_same_seed_same_numbers_on_the_batched_path():
    model, data = regression(n=500)
    kwargs = dict(loss="mse", epsilon=1e-4, localization=1.0, num_draws=20, batch_size=50, sampler="batched")
    a = llc.estimate_llc(model, data, num_chains=2, seed=3, **kwargs)
    b = llc.estimate_llc(model, data, num_chains=3, seed=3, **kwargs)
    np.testing.assert_array_equal(a.loss_trace, b.loss_trace[:2])  # a chain's numbers depend on its seed alone
    np.testing.assert_array_equal(a.mala_trace, b.mala_trace[:2])


class _Dropout(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(self.lin(x))


def test_auto_falls_back_to_devinterp_when_the_model_cannot_be_batched():
    torch.manual_seed(0)
    x, y = torch.randn(200, 4), torch.randn(200, 2)
    kwargs = dict(loss="mse", epsilon=1e-4, localization=1.0, num_chains=2, num_draws=10, num_burnin_steps=5, batch_size=50)
    chains._fallbacks_warned.clear()
    with pytest.warns(RuntimeWarning, match="cannot run this model"):
        est = llc.estimate_llc(_Dropout(), (x, y), **kwargs)
    assert est.diagnostics["sampler"] == "devinterp" and est.to_row()["sampler"] == "devinterp"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every estimate
        llc.estimate_llc(_Dropout(), (x, y), **kwargs)
    with pytest.raises(llc.LLCError, match="sampler='batched'"):
        llc.estimate_llc(_Dropout(), (x, y), sampler="batched", **kwargs)


def test_settings_are_recorded_and_checked():
    model, data = regression(n=300)
    kwargs = dict(loss="mse", epsilon=1e-4, localization=1.0, num_chains=2, num_draws=10, num_burnin_steps=5, batch_size=50)
    row = llc.estimate_llc(model, data, method="rmsprop_sgld", **kwargs).to_row()
    assert row["sampler"] == "batched" and row["method"] == "rmsprop_sgld"
    with pytest.raises(ValueError, match="sampler"):
        llc.estimate_llc(model, data, sampler="fast", **kwargs)
    with pytest.raises(ValueError, match="method"):
        llc.estimate_llc(model, data, method="sgnht", **kwargs)


def test_only_the_adapter_imports_devinterp():
    tree = ast.parse(inspect.getsource(sgld_batched))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any(name.split(".")[0] == "devinterp" for name in imported), imported


@pytest.mark.parametrize("key", ["sampler", "method"])
def test_config_rejects_an_unknown_sampler_or_method(key):
    from llcgrok.config import ConfigError, run_config_from_dict

    assert getattr(run_config_from_dict({"llc": {}}).llc, key) == {"sampler": "auto", "method": "sgld"}[key]
    with pytest.raises(ConfigError, match=f"'llc.{key}'"):
        run_config_from_dict({"llc": {key: "fastest"}}, source="p.yaml")


def test_trajectory_rows_record_the_path_and_the_method(tmp_path):
    from problems import train_tiny_run

    from llcgrok.config import LLCConfig
    from llcgrok.trajectory import run_trajectory

    run_dir = train_tiny_run(tmp_path / "run")
    cfg = LLCConfig(num_chains=2, num_draws=10, num_burnin_steps=5, batch_size=16, calibrate=False, curvature_probes=1,
                    device="cpu", sampler="batched", method="rmsprop_sgld")
    frame = run_trajectory(run_dir, cfg, quiet=True)
    assert (frame["sampler"] == "batched").all() and (frame["method"] == "rmsprop_sgld").all()
