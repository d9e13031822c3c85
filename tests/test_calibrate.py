"""Sampler calibration: the rule on hand-made tables, and sweeps on real models."""


import numpy as np
import pandas as pd
import pytest

from problems import regression, train_tiny_run

from llcgrok import calibrate as calibrate_module
from llcgrok.calibrate import NoRecommendation, calibrate, calibrate_run, load_calibration, recommend
from llcgrok.config import CalibrationConfig, LLCConfig
from llcgrok.llc import run_trajectory


def _row(eps, nbeta, llc, **kw):
    row = dict(epsilon=eps, nbeta=nbeta, llc_mean=llc, num_diverged=0, escaped=False, converged=True,
               frac_below_init=0.0, mala=0.9, trace_drift=0.0, skipped=False)
    row.update(kw)
    return row


def test_rule_prefers_a_plateau_at_the_preferred_nbeta_with_a_margin():
    table = pd.DataFrame([
        _row(1e-5, 100, 40.0, converged=False, trace_drift=0.5),  # still drifting
        _row(1e-4, 100, 50.0),
        _row(3e-4, 100, 52.0),  # plateau with 1e-4, and 1e-3 above it is healthy: margin
        _row(1e-3, 100, 53.0),  # plateau too, but no healthy neighbour above
        _row(1e-4, 10, 5.0),
        _row(3e-4, 10, 5.1),
    ])
    recommended, reason, out = recommend(table, nbeta_preferred=100)
    assert recommended == {"epsilon": 3e-4, "nbeta": 100.0}
    assert "plateau" in reason
    assert out.loc[0, "reject_reason"].startswith("trace not flat")
    assert out["plateau"].sum() == 5


def test_rule_rejects_every_unhealthy_kind_and_says_why():
    table = pd.DataFrame([
        _row(1e-4, 100, 50.0, num_diverged=1),
        _row(3e-4, 100, -2.0),
        _row(1e-3, 100, 4000.0, escaped=True),
        _row(3e-3, 100, 60.0, frac_below_init=0.6),
        _row(1e-2, 100, 60.0, mala=0.05),
    ])
    recommended, reason, out = recommend(table)
    assert recommended is None
    assert "no healthy point" in reason
    reasons = out["reject_reason"].tolist()
    assert "diverged" in reasons[0] and "not positive" in reasons[1] and "left the basin" in reasons[2]
    assert "below L_n" in reasons[3] and "MALA" in reasons[4]


def test_rule_without_a_plateau_still_picks_a_healthy_point_and_warns():
    table = pd.DataFrame([_row(1e-4, 100, 10.0), _row(1e-3, 100, 40.0)])
    recommended, reason, _ = recommend(table)
    assert recommended is not None and "No plateau" in reason


def test_rule_keeps_the_preferred_nbeta_over_a_plateau_at_another():
    # A study fixes nbeta so that LLC values compare; a plateau at another nbeta must not
    # pull one run away from it while a healthy point exists at the preferred one.
    table = pd.DataFrame([
        _row(1e-4, 100, 10.0), _row(1e-3, 100, 40.0),  # healthy, no plateau
        _row(1e-4, 300, 30.0), _row(1e-3, 300, 31.0),  # a plateau
    ])
    recommended, reason, _ = recommend(table, nbeta_preferred=100)
    assert recommended == {"epsilon": 1e-4, "nbeta": 100.0}  # 1e-3 above it is healthy: a margin
    assert "No plateau at this nbeta" in reason
    # With no healthy point at the preferred nbeta, the nearest nbeta that has one.
    table.loc[:1, "num_diverged"] = 1
    recommended, reason, _ = recommend(table, nbeta_preferred=100)
    assert recommended == {"epsilon": 1e-4, "nbeta": 300.0} and "plateau" in reason


def test_calibration_on_a_regular_model_recommends_a_point_at_d_over_2():
    model, data = regression(n=3000, k=3, m=2)
    result = calibrate(
        model, data, loss="mse", epsilons=[3e-5, 1e-4, 3e-4, 3.0], nbetas=[100.0, 300.0],
        localization=1.0, num_chains=3, num_draws=300, batch_size=300, seed=0,
    )
    assert result.recommended is not None, result.reason
    chosen = result.table[np.isclose(result.table.epsilon, result.recommended["epsilon"])
                          & np.isclose(result.table.nbeta, result.recommended["nbeta"])].iloc[0]
    assert chosen.llc_mean == pytest.approx(3.0, rel=0.2)  # d/2 with d = 6
    # epsilon 3 is far past the stability limit: that point failed and was never chosen.
    worst = result.table[result.table.epsilon == 3.0]
    assert not worst["healthy"].any()
    assert not result.traces_at_recommended.empty


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("cal") / "run")


def _llc_cfg(epsilons, nbetas=(10.0,)):
    return LLCConfig(
        epsilon=1e-4, nbeta=10.0, localization=100.0, num_chains=1, num_draws=10, batch_size=32, calibrate=True,
        calibration=CalibrationConfig(epsilons=list(epsilons), nbetas=list(nbetas)),
    )


def test_calibrate_run_writes_its_files_and_reuses_them(trained_run, monkeypatch):
    cfg = _llc_cfg([1e-4, 1e-3])
    result = calibrate_run(trained_run, cfg, quiet=True)
    assert len(result.table) == 2 and result.step == 30
    for name in ("calibration.csv", "calibration.json", "figures/calibration_heatmap.png"):
        assert (trained_run / name).exists(), name
    stored = load_calibration(trained_run)
    assert stored.recommended == result.recommended and stored.step == 30

    def must_not_run(*args, **kwargs):
        raise AssertionError("a matching calibration should have been reused")

    monkeypatch.setattr(calibrate_module, "calibrate", must_not_run)
    again = calibrate_run(trained_run, cfg, quiet=True)
    assert again.recommended == result.recommended
    with pytest.raises(AssertionError):  # other settings: the stored one does not match
        calibrate_run(trained_run, _llc_cfg([1e-4, 3e-4]), quiet=True)


def test_trajectory_without_a_recommendation_is_flagged_or_refused(trained_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("calibration.csv", "calibration.json", "llc.csv"):
        (run / name).unlink(missing_ok=True)
    # An epsilon so large every chain fails: calibration can recommend nothing.
    cfg = _llc_cfg([50.0])
    with pytest.raises(NoRecommendation, match="no healthy"):
        run_trajectory(run, cfg, quiet=True, strict=True)
    with pytest.warns(UserWarning, match="no healthy epsilon/nbeta"):
        frame = run_trajectory(run, cfg, quiet=True)
    assert frame["settings_source"].str.startswith("UNCALIBRATED").all()
    assert (frame["epsilon"] == 1e-4).all()


def test_trajectory_uses_the_recommended_point(trained_run, tmp_path, monkeypatch):
    import shutil

    from llcgrok.calibrate import Calibration

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "llc.csv").unlink(missing_ok=True)
    chosen = Calibration(table=pd.DataFrame(), recommended={"epsilon": 3e-5, "nbeta": 7.0}, reason="test", step=30)
    monkeypatch.setattr(calibrate_module, "calibrate_run", lambda *a, **k: chosen)
    frame = run_trajectory(run, _llc_cfg([1e-4]), quiet=True)
    assert frame["settings_source"].str.startswith("calibrated at step 30").all()
    assert np.allclose(frame["epsilon"], 3e-5) and np.allclose(frame["nbeta"], 7.0)
