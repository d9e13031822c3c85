"""Sampler calibration: the rule on hand-made tables, and sweeps on real models."""


import numpy as np
import pandas as pd
import pytest

from problems import regression, train_tiny_run

from llcgrok import calibrate as calibrate_module
from llcgrok import runs
from llcgrok import trajectory as trajectory_module
from llcgrok.calibrate import NoRecommendation, calibrate, recommend
from llcgrok.trajectory import calibrate_run, load_calibration
from llcgrok.config import CalibrationConfig, LLCConfig
from llcgrok.trajectory import run_trajectory


def _row(eps, nbeta, llc, gamma=1.0, **kw):
    row = dict(localization=gamma, epsilon=eps, nbeta=nbeta, llc_mean=llc, llc_std=0.0, num_chains=4, num_diverged=0,
               escaped=False, converged=True, frac_below_init=0.0, mala=0.9, trace_drift=0.0, r_hat=1.0, skipped=False,
               step_fraction=float("nan"))
    row.update(kw)
    return row


def test_rule_takes_the_half_step_of_the_largest_pair_that_halving_no_longer_moves():
    # Discretisation inflates the estimate at large steps: 4e-4 is healthy but 30 % above
    # its half step; 2e-4 and 1e-4 agree within 5 %, so the half step 1e-4 is chosen.
    table = pd.DataFrame([_row(4e-4, 100, 65.0), _row(2e-4, 100, 50.0), _row(1e-4, 100, 48.0),
                          _row(5e-5, 100, 30.0, converged=False, trace_drift=0.5)])
    recommended, reason, out = recommend(table)
    assert recommended["epsilon"] == 1e-4 and recommended["step_converged"]
    assert out.set_index("epsilon").loc[[4e-4, 2e-4], "step_converged"].tolist() == [False, False]
    assert out.loc[3, "reject_reason"].startswith("trace not flat")


def test_rule_certifies_the_first_gamma_where_the_estimate_stops_changing():
    rows = []
    for gamma, llc in ((1e4, 2.0), (1e3, 9.0), (1e2, 19.0), (1e1, 20.0), (1.0, 20.5)):
        rows += [_row(2e-4, 100, llc, gamma), _row(1e-4, 100, llc * 0.98, gamma)]
    recommended, reason, out = recommend(pd.DataFrame(rows))
    assert recommended["localization"] == 10.0 and recommended["certified"] and recommended["regime"] == "llc"
    assert recommended["gamma_slope"] == pytest.approx(abs(np.log(20.0 / 19.0)), rel=1e-6)
    assert recommended["epsilon"] == 1e-4  # the half step of the agreeing pair
    assert "gamma-plateau" in reason and out["chosen"].sum() == 1


def test_rule_refuses_to_certify_without_a_gamma_plateau():
    rows = []
    for gamma, llc in ((1e5, 10.0), (1e4, 58.0), (1e3, 300.0)):  # the estimate grows 5x per decade
        rows += [_row(2e-6, 556, llc, gamma), _row(1e-6, 556, llc * 0.97, gamma)]
    rows.append(_row(1e-6, 556, 600.0, 1e2, escaped=True))
    recommended, reason, _ = recommend(pd.DataFrame(rows))
    assert recommended["regime"] == "curvature" and not recommended["certified"]
    assert recommended["localization"] == 1e3  # the smallest stable gamma, labelled
    assert "no gamma-plateau" in reason


def test_rule_rejects_every_unhealthy_kind_and_says_why():
    table = pd.DataFrame([
        _row(1e-4, 100, 50.0, num_diverged=1),
        _row(3e-4, 100, -2.0),
        _row(1e-3, 100, 4000.0, escaped=True),
        _row(3e-3, 100, 60.0, llc_std=40.0),  # standard error 20 / 60 of the estimate
        _row(1e-2, 100, 60.0, mala=0.05),
        _row(3e-2, 100, 60.0, r_hat=1.5),
    ])
    recommended, reason, out = recommend(table)
    assert recommended is None
    assert "no healthy point" in reason
    reasons = out["reject_reason"].tolist()
    assert "diverged" in reasons[0] and "not positive" in reasons[1] and "left the basin" in reasons[2]
    assert "too noisy" in reasons[3] and "MALA" in reasons[4] and "R-hat" in reasons[5]


def test_rule_keeps_the_preferred_nbeta():
    rows = [_row(2e-4, 100, 10.0), _row(1e-4, 100, 10.2), _row(2e-4, 300, 30.0), _row(1e-4, 300, 30.5)]
    recommended, _, _ = recommend(pd.DataFrame(rows), nbeta_preferred=100)
    assert recommended["nbeta"] == 100.0
    rows[0]["num_diverged"] = rows[1]["num_diverged"] = 1
    recommended, _, _ = recommend(pd.DataFrame(rows), nbeta_preferred=100)
    assert recommended["nbeta"] == 300.0


def test_calibration_on_a_regular_model_certifies_d_over_2():
    # Linear regression: every direction is regular, so below gamma ~ nbeta * h_min the
    # estimate stops changing at d/2 = 3 and the rule certifies it.
    model, data = regression(n=3000, k=3, m=2)
    result = calibrate(model, data, loss="mse", localizations=[1e4, 1e3, 1e2, 1e1, 1.0], num_chains=3, num_draws=300,
                       batch_size=300, seed=0, max_burnin_steps=300)
    rec = result.recommended
    assert rec is not None and rec["certified"] and rec["regime"] == "llc", result.reason
    assert rec["llc_mean"] == pytest.approx(3.0, rel=0.15)
    assert rec["localization"] <= 10.0
    assert not result.traces_at_recommended.empty
    assert set(result.table["localization"]) >= {1e4, 1e2}


def test_a_localization_dominated_setting_is_labelled_curvature():
    model, data = regression(n=3000, k=3, m=2)
    # gamma 1e4 against nbeta * h ~ 375: every direction counts ~4 %, the estimate is ~0.11.
    result = calibrate(model, data, loss="mse", localizations=[1e4], num_chains=4, num_draws=300, batch_size=300)
    rec = result.recommended
    assert rec is not None and rec["regime"] == "curvature" and not rec["certified"]
    assert rec["trace_ratio"] == pytest.approx(1.0, abs=0.3)  # it measures nbeta tr(H) / (2 gamma)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("cal") / "run")


def _llc_cfg(epsilons, nbetas=(10.0,), localizations=(100.0, 10.0)):
    return LLCConfig(
        epsilon=1e-4, nbeta=10.0, localization=100.0, num_chains=1, num_draws=10, batch_size=32, calibrate=True,
        num_burnin_steps=5, curvature_probes=2,
        calibration=CalibrationConfig(epsilons=list(epsilons), nbetas=list(nbetas), localizations=list(localizations)),
    )


def test_calibrate_run_applies_the_rule_at_the_final_and_peak_checkpoints(trained_run, monkeypatch):
    cfg = _llc_cfg([1e-4, 5e-5])
    result = calibrate_run(trained_run, cfg, quiet=True)
    curvature = pd.read_csv(trained_run / "curvature.csv")
    assert curvature["step"].tolist() == [s for s, _ in runs.list_checkpoints(trained_run)]
    peak = int(curvature.loc[curvature["trace_h"].idxmax(), "step"])
    assert set(result.table["step"]) == {30, peak} and result.step == 30
    assert {"localization", "step_fraction", "trace_ratio", "halving_change", "step_converged"} <= set(result.table.columns)
    for name in ("calibration.csv", "calibration.json", "figures/calibration_heatmap.png"):
        assert (trained_run / name).exists(), name
    stored = load_calibration(trained_run)
    assert stored.recommended == result.recommended and stored.step == 30
    if result.recommended is not None:  # one setting for the trajectory: the smaller step and gamma of the two
        per_step = result.table[result.table["chosen"]]
        assert result.recommended["epsilon"] == pytest.approx(per_step["epsilon"].min())
        assert result.recommended["regime"] in ("llc", "curvature")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a matching calibration should have been reused")

    monkeypatch.setattr(trajectory_module, "calibrate", must_not_run)
    again = calibrate_run(trained_run, cfg, quiet=True)
    assert again.recommended == result.recommended
    with pytest.raises(AssertionError):  # other settings: the stored one does not match
        calibrate_run(trained_run, _llc_cfg([1e-4, 3e-4]), quiet=True)


def test_trajectory_without_a_recommendation_is_flagged_or_refused(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("calibration.csv", "calibration.json", "llc.csv"):
        (run / name).unlink(missing_ok=True)
    # An epsilon so large every chain fails: calibration can recommend nothing.
    cfg = _llc_cfg([50.0])
    with pytest.raises(NoRecommendation, match="no healthy"):
        run_trajectory(run, cfg, quiet=True, strict=True)
    with pytest.warns(UserWarning, match="no healthy setting"):
        frame = run_trajectory(run, cfg, quiet=True)
    assert frame["settings_source"].str.startswith("UNCALIBRATED").all()
    assert (frame["epsilon"] == 1e-4).all() and (frame["regime"] == "curvature").all()


def test_trajectory_uses_the_recommended_point_and_its_regime(trained_run, tmp_path, monkeypatch):
    import shutil

    from llcgrok.calibrate import Calibration

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "llc.csv").unlink(missing_ok=True)
    rec = {"epsilon": 3e-5, "nbeta": 7.0, "localization": 1.0, "num_burnin_steps": 4, "certified": True,
           "regime": "llc", "gamma_slope": 0.05, "steps": [30]}
    chosen = Calibration(table=pd.DataFrame(), recommended=rec, reason="test", step=30)
    monkeypatch.setattr(trajectory_module, "calibrate_run", lambda *a, **k: chosen)
    frame = run_trajectory(run, _llc_cfg([1e-4]), quiet=True)
    assert frame["settings_source"].str.startswith("calibrated at step 30").all()
    assert np.allclose(frame["epsilon"], 3e-5) and np.allclose(frame["nbeta"], 7.0)
    assert (frame["num_burnin_steps"] == 4).all() and np.allclose(frame["gamma_slope"], 0.05)
    # trace_ratio is each row's own: llc / (nbeta tr(H) / 2 gamma); "llc" only where it is <= 0.5
    # and the row itself is healthy (a certified setting does not make a drifting or negative
    # estimate an LLC)
    expected = frame["llc_mean"] / (7.0 * frame["trace_h"] / 2.0)
    assert np.allclose(frame["trace_ratio"], expected, equal_nan=True)
    healthy_ratio = frame["trace_ratio"] <= 0.5
    assert ((frame["regime"] == "llc") == (healthy_ratio & frame["llc_mean"].notna() & frame["healthy"].astype(bool))).all()
    assert not (frame["regime"].eq("llc") & ~frame["healthy"].astype(bool)).any()
