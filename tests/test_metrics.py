import math

import pandas as pd
import pytest

from llcgrok.metrics import aggregate_over_seeds, post_grokking_stability, standard_error, summarize


def _table(train_acc, val_acc):
    n = len(val_acc)
    return pd.DataFrame(
        {"step": [10 * (i + 1) for i in range(n)], "train_loss": [1.0] * n, "train_acc": train_acc,
         "val_loss": [2.0] * n, "val_acc": val_acc}
    )


def test_steps_and_stability_on_a_hand_made_table():
    table = _table([0.5, 0.995, 1.0, 1.0, 1.0, 1.0], [0.1, 0.2, 0.995, 0.98, 1.0, 0.999])
    s = summarize(table)
    assert s["steps_to_memorization"] == 20
    assert s["steps_to_grokking"] == 30
    assert s["min_val_acc_after_grokking"] == pytest.approx(0.98)
    assert s["frac_evals_above_after_grokking"] == pytest.approx(3 / 4)
    assert s["num_drops_after_grokking"] == 1
    assert s["final_val_acc"] == pytest.approx(0.999)


def test_threshold_is_strict_and_never_is_none():
    table = _table([0.99, 0.99], [0.99, 0.5])
    s = summarize(table)
    assert s["steps_to_memorization"] is None and s["steps_to_grokking"] is None
    assert math.isnan(post_grokking_stability(table)["min_val_acc_after_grokking"])


def test_standard_error_uses_sample_std_over_sqrt_n():
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(pd.Series([1, 2, 3, 4]).std(ddof=1) / 2)
    assert math.isnan(standard_error([5.0]))


def test_aggregate_over_seeds_counts_missing():
    table = pd.DataFrame({"arch": ["a", "a", "a", "b"], "steps_to_grokking": [100, 300, None, 50]})
    agg = aggregate_over_seeds(table, ["arch"], ["steps_to_grokking"]).set_index("arch")
    assert agg.loc["a", "steps_to_grokking_mean"] == 200
    assert agg.loc["a", "steps_to_grokking_sem"] == pytest.approx(100.0)  # std 141.42 / sqrt 2
    assert agg.loc["a", "steps_to_grokking_n"] == 2 and agg.loc["a", "num_seeds"] == 3
