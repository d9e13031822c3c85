"""What the figures draw, read back from the matplotlib objects: marks at the right steps,
the recommended calibration point, flagged estimates with their own markers, published
numbers where the package data puts them. Synthetic tables, well under a second each."""

import numpy as np
import pandas as pd
import pytest
import synthetic as S
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from llcgrok import plots, report
from llcgrok.plots.calibration import UNCALIBRATED_COLOR


def _vlines(ax):
    """x of every vertical line drawn with axvline (two equal x data points)."""
    return sorted(float(line.get_xdata()[0]) for line in ax.get_lines()
                  if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1])


def _flagged(ax, flag):
    return [c for c in ax.collections if c.get_gid() == f"flag:{flag}"]


@pytest.fixture
def tables():
    summary, trajectories = S.summary_frame(), S.trajectories_frame()
    trajectories["flag"] = report.estimate_flags(trajectories)
    return summary, trajectories


def test_training_and_llc_figures_mark_memorization_and_grokking_at_their_steps():
    steps = np.array([0, 10, 40, 100, 200, 400])
    metrics = pd.DataFrame({"step": steps, "train_acc": [0.1, 0.5, 1, 1, 1, 1], "val_acc": [0.0, 0.1, 0.2, 0.5, 1, 1],
                            "train_loss": np.linspace(3, 0.1, 6), "val_loss": np.linspace(4, 0.2, 6)})
    summary = {"steps_to_memorization": 40, "steps_to_grokking": 200, "run_id": "r"}
    for ax in plots.plot_training_curves(metrics, summary).axes:
        assert _vlines(ax) == [40.0, 200.0]
    trajectory = metrics.assign(llc_mean=[1.0, 5, 9, 7, 4, 4], llc_std=0.5, healthy=[True, False, True, True, True, True])
    fig = plots.plot_llc_vs_accuracy(trajectory, summary)
    acc, loss = fig.axes[:2]
    for ax in (acc, loss):
        assert _vlines(ax) == [40.0, 200.0]
    labels = [line.get_label() for line in acc.get_lines()]
    assert "memorization (step 40)" in labels and "grokking (step 200)" in labels


def test_calibration_heatmap_outlines_the_recommended_point():
    table = pd.DataFrame({"epsilon": [1e-4, 1e-3, 1e-4, 1e-3], "nbeta": [10.0, 10.0, 100.0, 100.0],
                          "llc_mean": [1.0, 2.0, 3.0, 4.0], "llc_over_nbeta": [0.1, 0.2, 0.03, 0.04],
                          "healthy": [True, True, True, False], "reject_reason": ["", "", "", "trace not flat"]})
    fig = plots.plot_calibration_heatmap(table, {"epsilon": 1e-3, "nbeta": 10.0})
    for ax in fig.axes[:2]:  # the two heatmaps (then their colour bars)
        red = [p for p in ax.patches if p.get_edgecolor() == to_rgba("red")]
        assert [(p.get_x(), p.get_y()) for p in red] == [(0.5, -0.5)]  # column epsilon 1e-3, row nbeta 10
        hatched = [p for p in ax.patches if p.get_hatch() == "//"]
        assert [(p.get_x(), p.get_y()) for p in hatched] == [(0.5, 0.5)]  # the rejected point
    assert "drift" in " ".join(t.get_text() for t in fig.axes[0].texts)


def test_bucket_curves_average_only_unflagged_estimates_and_draw_the_flagged_with_their_markers(tables):
    summary, trajectories = tables
    curves = report.mean_curves(trajectories)
    fig = plots.plot_bucket_curves(curves, "x_plus_y", trajectories=trajectories)
    small_llc, large_llc = fig.axes[0], fig.axes[3]
    (mean_line,) = [line for line in small_llc.get_lines() if line.get_label() == "1x16h2"]
    at_10 = dict(zip(mean_line.get_xdata(), mean_line.get_ydata()))[10]
    assert at_10 == 20.0  # seed 0 alone: seed 1's unhealthy 21 is left out
    (unhealthy,) = _flagged(small_llc, "unhealthy")
    assert unhealthy.get_offsets().tolist() == [[10.0, 21.0]]
    assert tuple(unhealthy.get_facecolor()[0]) == to_rgba("white")  # hollow: the unhealthy marker
    (curvature,) = _flagged(large_llc, "curvature")
    assert curvature.get_offsets().tolist() == [[1000.0, 80.0]]
    assert "2 flagged LLC estimate(s) left out of the means" in fig.get_suptitle()


def test_capacity_figure_is_against_log_params_coloured_by_depth_with_flags_and_never_grokked(tables):
    summary, trajectories = tables
    fig = plots.plot_capacity(report.capacity_table(summary, trajectories))
    peak, final, grok = fig.axes[:3]
    assert {ax.get_xscale() for ax in (peak, final, grok)} == {"log"}
    means = {line.get_label(): line for line in peak.get_lines()}
    assert set(means) == {"1 layer(s)", "2 layer(s)"}
    assert means["1 layer(s)"].get_color() != means["2 layer(s)"].get_color()
    assert means["2 layer(s)"].get_ydata().tolist() == [53.0]  # the curvature-regime peak (52) is not averaged
    (curvature,) = _flagged(peak, "curvature")
    assert curvature.get_offsets().tolist() == [[5000.0, 52.0]]
    (never,) = [c for c in grok.collections if c.get_gid() == "never-grokked"]
    assert never.get_offsets()[:, 0].tolist() == [5000.0]


def test_capacity_figures_draw_when_no_run_grokked(tables):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    summary, trajectories = tables
    never = summary.assign(steps_to_grokking=np.nan)
    for fig in (plots.plot_capacity(report.capacity_table(never, trajectories)),
                plots.plot_grokking_vs_baseline(report.baseline_comparison(never).query("source == 'this sweep'"))):
        FigureCanvasAgg(fig).draw()  # a log axis with only edge markers has no data limits of its own
        grok = fig.axes[2] if len(fig.axes) > 1 else fig.axes[0]
        lo, hi = grok.get_xlim()
        assert lo < 3000 and hi > 5000


def test_steps_by_arch_has_one_panel_per_task_labelled_with_it(tables):
    summary, _ = tables
    two_tasks = pd.concat([summary, summary.assign(task="x_minus_y", run_id=summary["run_id"] + "-minus")])
    fig = plots.plot_steps_by_arch(report.grokking_table(two_tasks))
    assert [ax.get_title() for ax in fig.axes] == ["task x_minus_y", "task x_plus_y"]
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1x16h2\nsmall", "2x16h2\nlarge"]
        assert "1/2 grokked" in [t.get_text() for t in ax.texts]  # 2x16h2: one seed of two


def test_grokking_against_the_published_baseline_draws_the_shipped_numbers(tables):
    summary, _ = tables
    comparison = report.baseline_comparison(summary)
    assert set(comparison["task"]) == {"x_plus_y"}
    fig = plots.plot_grokking_vs_baseline(comparison)
    (ax,) = fig.axes
    (stars,) = [c for c in ax.collections if c.get_gid() == "published:published baseline"]
    assert sorted(stars.get_offsets()[:, 1]) == [1620.0, 2510.0, 2960.0]
    assert len({x for x in stars.get_offsets()[:, 0]}) == 1  # one architecture, 2x128h4
    (diamonds,) = [c for c in ax.collections if c.get_gid() == "published:published capacity study"]
    assert len(diamonds.get_offsets()) == 4
    assert 7500.0 in [line.get_ydata()[0] for line in ax.get_lines()]  # the published budget
    assert ax.get_title() == "task x_plus_y"


def test_calibration_overview_highlights_uncalibrated_runs(tmp_path, tables):
    summary, trajectories = tables
    overview = report.calibration_overview(S.write_sweep(tmp_path / "sweep"), summary, trajectories)
    fig = plots.plot_calibration_overview(overview)
    labels = fig.axes[0].get_yticklabels()
    red = [t.get_text() for t in labels if t.get_color() == UNCALIBRATED_COLOR]
    assert red == [f"{S.UNCALIBRATED_RUN}  UNCALIBRATED"]
    (eps,) = [c for c in fig.axes[0].collections if c.get_gid() == "overview:epsilon"]
    colors = [tuple(c) for c in eps.get_facecolors()]
    assert colors.count(to_rgba(UNCALIBRATED_COLOR)) == 1 and len(colors) == 4
    assert "1 of 4 uncalibrated" in fig.get_suptitle()


def test_aligned_curves_put_each_runs_grokking_at_zero(tables):
    summary, trajectories = tables
    fig = plots.plot_aligned_curves(report.aligned_curves(trajectories, summary))
    llc_ax = fig.axes[0]
    xs = [line.get_xdata().tolist() for line in llc_ax.get_lines() if line.get_gid() != "grokking"]
    assert [s - 100 for s in S.STEPS] in xs and [s - 1000 for s in S.STEPS] in xs
    assert len(xs) == 3  # the run that never grokked is not drawn, but counted
    assert "1 run(s) never grokked" in fig.get_suptitle()
    assert _vlines(llc_ax) == [0.0]


def test_llc_against_losses_draws_every_checkpoint_and_marks_flags(tables):
    _, trajectories = tables
    fig = plots.plot_llc_vs_loss(trajectories)
    train_ax, val_ax = fig.axes
    assert train_ax.get_xscale() == "log" and "train" in train_ax.get_xlabel() and "validation" in val_ax.get_xlabel()
    (unhealthy,) = _flagged(train_ax, "unhealthy")
    assert unhealthy.get_offsets().tolist() == [[1.0, 21.0]]  # train loss 2 / 2 at the second checkpoint
    (curvature,) = _flagged(val_ax, "curvature")
    assert curvature.get_offsets().tolist() == [[0.75, 80.0]]


def test_save_figure_writes_each_format_and_the_data(tmp_path, tables):
    _, trajectories = tables
    fig = Figure(figsize=(2, 2))  # small: the formats are under test, not the drawing
    fig.subplots().plot([0, 1], [1, 0])
    first = plots.save_figure(fig, tmp_path / "f" / "llc_vs_loss.png", formats=["png", "pdf", "svg"], data=trajectories)
    assert first == tmp_path / "f" / "llc_vs_loss.png"
    assert (tmp_path / "f" / "llc_vs_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "f" / "llc_vs_loss.pdf").read_bytes()[:4] == b"%PDF"
    assert b"<svg" in (tmp_path / "f" / "llc_vs_loss.svg").read_bytes()[:400]
    data = pd.read_csv(tmp_path / "f" / "llc_vs_loss.csv").fillna({"flag": ""})  # CSV reads "" back as NaN
    pd.testing.assert_frame_equal(data, trajectories.reset_index(drop=True), check_dtype=False)
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [f"llc_vs_loss.{e}" for e in ("csv", "pdf", "png", "svg")]
    with pytest.raises(ValueError, match="figure formats"):
        plots.save_figure(fig, tmp_path / "g.png", formats=["bmp?"])
