"""Per-checkpoint SGLD traces: stored beside llc.csv, read back exactly, resumed, drawn."""

from types import SimpleNamespace

import numpy as np
import pytest

from problems import train_tiny_run

from llcgrok import plots, runs
from llcgrok.config import LLCConfig
from llcgrok.trajectory import run_trajectory


def _estimate(seed, chains=2, draws=5, burnin=3):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(loss_trace=rng.normal(1.0, 0.1, (chains, draws)), mala_trace=rng.uniform(0, 1, (chains, draws)),
                           init_loss=0.9 + seed, nbeta=50.0, epsilon=1e-4, localization=1e3, num_burnin_steps=burnin)


def test_traces_round_trip_exactly_and_a_step_is_replaced_not_doubled(tmp_path):
    first, second = _estimate(0), _estimate(1)
    runs.append_traces(tmp_path, 100, first)
    runs.append_traces(tmp_path, 20, second)
    stored = runs.read_trace_arrays(tmp_path)
    assert list(stored) == [20, 100]
    np.testing.assert_array_equal(stored[100]["loss_trace"], first.loss_trace)
    np.testing.assert_array_equal(stored[20]["mala_trace"], second.mala_trace)
    assert stored[20]["init_loss"].item() == 1.9 and stored[100]["num_burnin_steps"].item() == 3

    tidy = runs.read_traces(tmp_path)
    assert len(tidy) == 2 * 2 * 5 and tidy["step"].unique().tolist() == [20, 100]
    one = runs.read_traces(tmp_path, 100)
    np.testing.assert_array_equal(one.pivot(index="chain", columns="draw", values="loss").to_numpy(), first.loss_trace)

    replaced = _estimate(2)
    runs.append_traces(tmp_path, 100, replaced)  # a resumed trajectory redoes a step whose row was lost
    again = runs.read_trace_arrays(tmp_path)
    assert list(again) == [20, 100]
    np.testing.assert_array_equal(again[100]["loss_trace"], replaced.loss_trace)
    with pytest.raises(KeyError, match="no traces for step 7"):
        runs.read_traces(tmp_path, 7)
    assert not list(tmp_path.glob(".*tmp"))  # written under a temporary name, then renamed


def test_a_damaged_traces_file_is_named(tmp_path):
    (tmp_path / runs.TRACES_NPZ).write_bytes(b"not a zip")
    with pytest.raises(runs.TracesError, match="llc_traces.npz"):
        runs.read_traces(tmp_path)


@pytest.mark.slow
def test_trajectory_stores_every_checkpoints_traces_and_a_resume_appends(tmp_path):
    run = train_tiny_run(tmp_path / "run")
    cfg = LLCConfig(epsilon=1e-4, nbeta=None, localization=100.0, num_chains=2, num_draws=6, batch_size=64, calibrate=False,
                    num_burnin_steps=2, curvature_probes=1)
    frame = run_trajectory(run, cfg, quiet=True)
    stored = runs.read_trace_arrays(run)
    assert list(stored) == frame["step"].tolist()
    for row in frame.itertuples():
        loss = stored[row.step]["loss_trace"]
        assert loss.shape == (2, 6)
        # the stored traces are the ones behind the row: the LLC is n*beta * (mean loss - L_n(w*))
        assert row.nbeta * (loss.mean() - stored[row.step]["init_loss"].item()) == pytest.approx(row.llc_mean, rel=1e-9)

    # interrupted after two checkpoints: the rerun estimates the rest and appends their traces
    kept = frame["step"].tolist()[:2]
    frame.iloc[:2].to_csv(run / "llc.csv", index=False)
    before = {s: stored[s]["loss_trace"].copy() for s in kept}
    runs.append_traces(run, kept[0], SimpleNamespace(loss_trace=np.zeros((2, 6)), init_loss=0.0, nbeta=1.0))
    run_trajectory(run, cfg, quiet=True)
    after = runs.read_trace_arrays(run)
    assert list(after) == frame["step"].tolist()
    assert (after[kept[0]]["loss_trace"] == 0).all()  # a step in llc.csv is not estimated again
    np.testing.assert_array_equal(after[kept[1]]["loss_trace"], before[kept[1]])
    for step in frame["step"].tolist()[2:]:
        np.testing.assert_allclose(after[step]["loss_trace"], stored[step]["loss_trace"], rtol=1e-6)


@pytest.mark.slow
def test_sequence_trajectory_stores_its_traces_too(tmp_path):
    from llcgrok.seqtrain import seq_config, train_sequence
    from llcgrok.sequence_llc import sequence_llc_trajectory

    train_sequence(seq_config(dict(num_threads=1, task="fraction_of_x", seq_len=6, alphabet_size=3, n_train=128, n_val=32,
                                   num_steps=20, eval_every=10, batch_size=32, num_checkpoints=2,
                                   model={"d_model": 8, "num_heads": 1, "d_ff": 0})), tmp_path)
    frame = sequence_llc_trajectory(tmp_path, calibrate=False, epsilon=1e-5, nbeta=50.0, localization=1e3, num_chains=1,
                                    num_draws=6, num_burnin_steps=2, batch_size=64, curvature_probes=1)
    stored = runs.read_trace_arrays(tmp_path)
    assert list(stored) == frame["step"].tolist()
    assert {s["loss_trace"].shape for s in stored.values()} == {(1, 6)}


def test_checkpoint_traces_figure_marks_init_loss_burn_in_and_the_window(tmp_path):
    est = _estimate(0, chains=3, draws=8, burnin=4)
    runs.append_traces(tmp_path, 50, est)
    fig = plots.plot_checkpoint_traces(tmp_path, 50)
    loss_ax, llc_ax, mala_ax = fig.axes
    (init,) = [line for line in loss_ax.get_lines() if line.get_gid() == "init-loss"]
    assert init.get_ydata()[0] == pytest.approx(est.init_loss)
    (estimate,) = [line for line in llc_ax.get_lines() if line.get_gid() == "estimate"]
    assert estimate.get_ydata()[0] == pytest.approx(est.nbeta * (est.loss_trace.mean() - est.init_loss))
    assert len([line for line in loss_ax.get_lines() if line.get_label().startswith("chain")]) == 3
    chain0 = [line for line in loss_ax.get_lines() if line.get_label() == "chain 0"][0]
    assert chain0.get_xdata().tolist() == list(range(4, 12))  # draws start after the burn-in
    spans = {p.get_gid(): p.get_bbox() for p in loss_ax.patches}
    assert (spans["burn-in"].x0, spans["burn-in"].x1) == (0, 4)
    assert (spans["post-burn-in"].x0, spans["post-burn-in"].x1) == (4, 11)
    assert (spans["diagnostics-window"].x0, spans["diagnostics-window"].x1) == (8, 11)  # the last half: drift, R-hat
    assert "MALA" in mala_ax.get_ylabel()
    missing = plots.plot_checkpoint_traces(tmp_path, 7).axes[0].texts[0].get_text()
    assert missing == "no traces stored for step 7 (stored: 50)"


def test_curvature_on_a_subset_is_cached_apart_from_the_full_data_one(tmp_path):
    """llc.curvature_examples: tr(H) on a fixed random subset of the training data, kept in
    curvature.csv beside (not instead of) the full-data values."""
    import torch

    from llcgrok.curvature import curvature_subset
    from llcgrok.rundata import checkpoint_traces, open_run

    data = (torch.arange(10.0).unsqueeze(1), torch.arange(10))
    subset = curvature_subset(data, 4, seed=0)
    assert len(subset) == 4 and len(curvature_subset(data, 4, seed=0)) == 4
    assert torch.equal(subset.tensors[1], curvature_subset(data, 4, seed=0).tensors[1])
    assert len(curvature_subset(data, None)) == len(curvature_subset(data, 50)) == 10

    run = train_tiny_run(tmp_path / "run")
    view = open_run(run, "cpu")
    full = checkpoint_traces(view, probes=2)
    part = checkpoint_traces(view, probes=2, examples=view.num_data // 2)
    assert len(full) == len(part) == len(view.checkpoints)
    assert not np.allclose(full["trace_h"], part["trace_h"])  # another loss, another estimate
    on_disk = __import__("pandas").read_csv(run / runs.CURVATURE_CSV)
    assert len(on_disk) == 2 * len(view.checkpoints)
    np.testing.assert_array_equal(checkpoint_traces(view, probes=2)["trace_h"], full["trace_h"])  # read back, not redone
