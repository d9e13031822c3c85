"""The capacity report's tables: flagged estimates, the means that leave them out, the
capacity and calibration tables, curves aligned at grokking, the published baseline."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import synthetic as S

from llcgrok import report
from llcgrok.metrics import estimate_flags


def test_flags_read_healthy_and_regime_as_csv_gives_them_back():
    frame = pd.DataFrame({"healthy": ["True", "False", np.nan, "True"], "regime": ["llc", "curvature", "llc", "curvature"]})
    assert estimate_flags(frame).tolist() == ["", "unhealthy", "unhealthy", "curvature"]
    assert estimate_flags(frame.drop(columns="regime")).tolist() == ["", "unhealthy", "unhealthy", ""]
    assert estimate_flags(pd.DataFrame({"llc_mean": [1.0]})).tolist() == [""]  # no diagnostics: nothing to flag on


def test_loaded_trajectories_carry_flags_and_mean_curves_leave_the_flagged_out(tmp_path):
    sweep = S.write_sweep(tmp_path / "sweep")
    trajectories = report.load_trajectories(sweep)
    flagged = trajectories.loc[trajectories["flag"] != "", ["run_id", "step", "flag"]].values.tolist()
    assert sorted(flagged) == sorted([[*S.UNHEALTHY, "unhealthy"], [*S.CURVATURE, "curvature"]])
    curves = report.mean_curves(trajectories).set_index(["arch", "step"])
    assert curves.loc[("1x16h2", 10), ["llc_mean_mean", "llc_mean_n", "llc_mean_flagged"]].tolist() == [20.0, 1, 1]
    assert curves.loc[("2x16h2", 1000), ["llc_mean_mean", "llc_mean_n", "llc_mean_flagged"]].tolist() == [81.0, 1, 1]
    assert curves.loc[("1x16h2", 100), ["llc_mean_mean", "llc_mean_n", "llc_mean_flagged"]].tolist() == [30.5, 2, 0]
    assert curves.loc[("1x16h2", 10), "val_acc_n"] == 2  # accuracy is averaged over every seed
    assert curves["llc_mean_flagged"].sum() == 2
    kept = report.mean_curves(trajectories, exclude=["unhealthy"]).set_index(["arch", "step"])
    assert kept.loc[("2x16h2", 1000), "llc_mean_mean"] == 80.5  # asked to: the curvature point averaged in
    assert report.flag_summary(trajectories).startswith("2 of 16 LLC estimates flagged (1 unhealthy, 1 in the curvature")


def test_capacity_table_says_which_peak_and_final_estimates_are_flagged():
    table = report.capacity_table(S.summary_frame(), S.trajectories_frame()).set_index("run_id")
    assert table.loc[S.CURVATURE[0], ["peak_flag", "final_flag"]].tolist() == ["curvature", "curvature"]
    assert (table.drop(index=S.CURVATURE[0])[["peak_flag", "final_flag"]] == "").all().all()
    assert table.loc["x_plus_y-L1-d16-h2-s0", ["num_params", "num_layers", "steps_to_grokking"]].tolist() == [3000, 1, 100]


def test_llc_table_leaves_flagged_peaks_out_when_given_the_trajectories():
    summary, trajectories = S.summary_frame(), S.trajectories_frame()
    plain = report.llc_table(summary).set_index("arch")
    assert plain.loc["2x16h2", ["llc_peak_mean", "llc_peak_n"]].tolist() == [52.5, 2]
    checked = report.llc_table(summary, trajectories).set_index("arch")
    assert checked.loc["2x16h2", ["llc_peak_mean", "llc_peak_n", "llc_final_n"]].tolist() == [53.0, 1, 1]
    assert checked.loc["1x16h2", ["llc_peak_mean", "llc_peak_n"]].tolist() == [51.5, 2]


def test_aligned_curves_subtract_each_runs_own_grokking_step():
    aligned = report.aligned_curves(S.trajectories_frame(), S.summary_frame())
    by_run = aligned.groupby("run_id")["steps_since_grokking"].apply(list)
    assert by_run["x_plus_y-L1-d16-h2-s1"] == [s - 1000 for s in S.STEPS]
    assert all(math.isnan(v) for v in by_run["x_plus_y-L2-d16-h2-s1"])  # never grokked: kept, to be counted


def test_calibration_overview_counts_healthy_points_and_marks_uncalibrated_runs(tmp_path):
    sweep = S.write_sweep(tmp_path / "sweep")
    summary = report.load_summary(sweep)
    overview = report.calibration_overview(sweep, summary, report.load_trajectories(sweep, summary)).set_index("run_id")
    assert overview["calibrated"].tolist().count(False) == 1 and not overview.loc[S.UNCALIBRATED_RUN, "calibrated"]
    assert overview.loc[S.UNCALIBRATED_RUN, ["calibration_points", "calibration_healthy"]].tolist() == [2, 0]
    assert overview.loc["x_plus_y-L1-d16-h2-s0", ["calibration_points", "calibration_healthy"]].tolist() == [2, 1]
    assert overview.loc[S.UNHEALTHY[0], ["checkpoints", "checkpoints_healthy"]].tolist() == [4, 3]
    assert overview.loc[S.CURVATURE[0], ["checkpoints_healthy", "checkpoints_curvature"]].tolist() == [3, 1]
    assert overview.loc["x_plus_y-L1-d16-h2-s0", ["epsilon", "nbeta", "localization"]].tolist() == [1e-4, 100.0, 1e5]


def test_the_published_baseline_comes_from_the_shipped_data_file(repo_root):
    shipped = json.loads((repo_root / "llcgrok" / "data" / report.BASELINE_FILE).read_text())
    assert report.published_results() == shipped
    baseline = report.ai_scientist_baseline()
    seeds = baseline[baseline["source"] == "published baseline"].set_index(["task", "seed"])
    for task, steps in shipped["baseline"]["step_val_acc_99_per_seed"].items():
        assert [seeds.loc[(task, i), "step_val_acc_99"] for i in range(len(steps))] == steps
    assert seeds.loc[("x_plus_y", 0), "arch"] == "2x128h4"
    assert seeds.xs("permutation")["steps_to_grokking"].isna().all()  # 7500 there means never within the budget
    assert seeds.xs("x_plus_y")["steps_to_grokking"].notna().all()
    counts = baseline.drop_duplicates(["task", "arch"]).set_index(["task", "arch"])["num_params"]
    assert counts[("permutation", "2x128h4")] > counts[("x_plus_y", "2x128h4")]  # 120 classes against 97


def test_baseline_comparison_keeps_the_sweeps_tasks_and_marks_its_never_grokked_runs():
    comparison = report.baseline_comparison(S.summary_frame())
    assert set(comparison["task"]) == {"x_plus_y"}
    ours = comparison[comparison["source"] == "this sweep"]
    assert len(ours) == 4 and ours["steps_to_grokking"].isna().sum() == 1
    table = report.baseline_table(comparison).set_index(["arch", "source"])
    assert table.loc[("2x128h4", "published baseline"), "steps_to_grokking_mean"] == pytest.approx((2960 + 1620 + 2510) / 3)
    assert table.loc[("2x16h2", "this sweep"), "steps_to_grokking_n"] == 1


def test_an_unknown_figure_format_stops_the_report_before_it_runs(tmp_path, capsys):
    from llcgrok.cli import main

    sweep = S.write_sweep(tmp_path / "sweep")
    assert main(["report", str(sweep), "--figure-formats", "png,tiff2", "--quiet"]) == 2
    assert "tiff2" in capsys.readouterr().err
    assert not (sweep / "report.ipynb").exists() and not (sweep / "figures").exists()
