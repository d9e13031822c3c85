"""DMD on sequences with known linear dynamics, the run-directory wrapper and its figures."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from llcgrok import dmd, plots
from llcgrok.fingerprints import FINGERPRINTS_CSV, QUANTILE_COLUMNS

# Three damped rotations: eigenvalues r * exp(+-i theta).
BLOCKS = [(0.99, 0.1), (0.95, 0.4), (0.9, 1.2)]
TRUE = np.array([r * np.exp(s * 1j * th) for r, th in BLOCKS for s in (1, -1)])


def linear_sequence(steps=80, noise=0.0, seed=0):
    """x_{t+1} = A x_t (6 hidden dims), seen through a fixed random 19 x 6 map."""
    rng = np.random.default_rng(seed)
    a = np.zeros((6, 6))
    for i, (r, th) in enumerate(BLOCKS):
        a[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = r * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    observe = rng.normal(size=(19, 6))
    x = rng.normal(size=6)
    out = []
    for _ in range(steps):
        out.append(observe @ x)
        x = a @ x
    out = np.array(out)
    return out + noise * out.std() * rng.normal(size=out.shape)


def max_mismatch(found, expected):
    """Largest distance from an expected eigenvalue to the nearest found one (and back)."""
    found, expected = np.asarray(found), np.asarray(expected)
    return max(np.abs(found[:, None] - expected[None, :]).min(axis=0).max(),
               np.abs(found[:, None] - expected[None, :]).min(axis=1).max())


@pytest.mark.parametrize("centring", ["snapshot", "none"])
def test_recovers_known_eigenvalues(centring):
    result = dmd.dmd(linear_sequence(), n_delays=4, rank=6, centring=centring)
    assert result.rank == 6 and len(result.eigenvalues) == 6
    assert max_mismatch(result.eigenvalues, TRUE) < 1e-6
    assert np.all(np.diff(np.abs(result.eigenvalues)) <= 1e-12)  # sorted by modulus


def test_t0_centring_adds_the_constant_mode():
    result = dmd.dmd(linear_sequence(), n_delays=4, rank=7, centring="t0")
    assert max_mismatch(result.eigenvalues, np.append(TRUE, 1.0)) < 1e-6


def test_rank_is_capped_by_the_data():
    result = dmd.dmd(linear_sequence(), n_delays=32, rank=10)
    assert result.rank == 6  # the embedded data has rank 6; no eigenvalues made of round-off
    assert max_mismatch(result.eigenvalues, TRUE) < 1e-6


def test_noisy_sequence_within_a_looser_tolerance():
    result = dmd.dmd(linear_sequence(noise=1e-3, seed=3), n_delays=8, rank=6)
    assert max_mismatch(result.eigenvalues, TRUE) < 1e-3


def test_modes_and_amplitudes_rebuild_the_embedded_sequence():
    x = linear_sequence()
    result = dmd.dmd(x, n_delays=4, rank=6, centring="none")
    h = dmd.hankel(x, 4)
    for t in (0, 5, 20):
        rebuilt = result.modes @ (result.eigenvalues**t * result.amplitudes)
        np.testing.assert_allclose(rebuilt.real, h[:, t], atol=1e-8 * np.abs(h).max())


def test_hankel_layout():
    x = np.arange(12.0).reshape(6, 2)  # 6 snapshots of 2 features
    h = dmd.hankel(x, 3)
    assert h.shape == (6, 4)
    np.testing.assert_array_equal(h[:, 0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(h[:, 3], [6, 7, 8, 9, 10, 11])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="n_delays=32 needs at least 33 snapshots, got 20"):
        dmd.dmd(np.ones((20, 19)), n_delays=32)
    with pytest.raises(ValueError, match="centring"):
        dmd.dmd(linear_sequence(), n_delays=4, centring="mean")
    with pytest.raises(ValueError, match="rank"):
        dmd.dmd(linear_sequence(), n_delays=4, rank=0)
    with pytest.raises(ValueError, match="NaN"):
        dmd.dmd(np.full((10, 19), np.nan), n_delays=2)


def _fake_run(path, steps, x):
    path.mkdir(parents=True)
    frame = pd.DataFrame(x, columns=QUANTILE_COLUMNS)
    frame.insert(0, "step", steps)
    frame.to_csv(path / FINGERPRINTS_CSV, index=False)
    return path


def test_dmd_of_run_writes_the_spectrum(tmp_path):
    x = linear_sequence(60)
    run = _fake_run(tmp_path / "run", np.arange(60) * 10, x)
    table = dmd.dmd_of_run(run, n_delays=4, rank=6)
    assert (run / dmd.DMD_CSV).exists()
    written = pd.read_csv(run / dmd.DMD_CSV)
    assert len(written) == 6 and {"real", "imag", "modulus", "angle", "growth_rate", "n_delays", "rank",
                                  "effective_rank", "centring", "first_step", "last_step", "num_snapshots"} <= set(written.columns)
    assert max_mismatch(table["real"] + 1j * table["imag"], TRUE) < 1e-6
    assert table["dt"].iloc[0] == 10 and table["last_step"].iloc[0] == 590
    np.testing.assert_allclose(table["growth_rate"], np.log(table["modulus"]) / 10)
    short = dmd.dmd_of_run(run, n_delays=4, rank=6, step_range=(0, 100), write=False)
    assert short["num_snapshots"].iloc[0] == 11
    with pytest.raises(ValueError, match="needs at least 33 snapshots"):
        dmd.dmd_of_run(run, n_delays=32, step_range=(0, 100))
    uneven = _fake_run(tmp_path / "uneven", [0, 10, 30, 40, 50, 60], x[:6])
    with pytest.raises(ValueError, match="not evenly spaced"):
        dmd.dmd_of_run(uneven, n_delays=2)


def test_figures():
    rows = []
    for wd in (0.0, 1.0):
        for seed in (0, 1):
            spectrum = dmd.dmd(linear_sequence(seed=seed), n_delays=4, rank=6).to_frame()
            rows.append(spectrum.assign(run_id=f"wd{wd}-s{seed}", weight_decay=wd, seed=seed))
    spectra = pd.concat(rows, ignore_index=True)
    assert set(dmd.leading_moduli(spectra).columns) >= {"run_id", "weight_decay", "seed", "modulus_1", "modulus_3"}
    llc = pd.DataFrame({"run_id": "wd0.0-s0", "weight_decay": 0.0, "seed": 0, "step": [0, 10, 100],
                        "llc_mean": [1.0, 5.0, 3.0], "steps_to_grokking": 50})
    assert isinstance(plots.plot_dmd_spectra(spectra), Figure)
    assert isinstance(plots.plot_dmd_spectra(spectra, llc=llc), Figure)
    fp = pd.DataFrame(np.sort(-np.abs(linear_sequence(30)), axis=1), columns=QUANTILE_COLUMNS)
    fp.insert(0, "step", np.arange(30) * 10)
    assert isinstance(plots.plot_fingerprint_bands(fp, {"steps_to_grokking": 100}), Figure)
    study = pd.concat([fp.assign(run_id=f"r{i}", weight_decay=float(i), seed=0, steps_to_grokking=100) for i in range(2)])
    assert isinstance(plots.plot_fingerprint_bands(study), Figure)
