import pandas as pd

from llcgrok.capacity import assign_buckets, expand_architectures, find_pairs, grid_table
from llcgrok.config import load_params


def test_reference_grid(repo_root):
    table = grid_table(load_params(repo_root / "params" / "ai_scientist.yaml"))
    assert len(table) == 27
    assert set(table["bucket"]) == {"small", "medium", "large"}
    pairs = find_pairs(table)
    found = {(r.deep_narrow[:-2], r.wide_shallow[:-2]) for r in pairs.itertuples()}
    assert ("4x64", "1x128") in found and ("4x128", "1x256") in found
    assert all(pairs["relative_gap"] <= 0.15)


def test_heads_that_do_not_divide_are_dropped():
    table = expand_architectures([1], [48, 64], [3, 4], vocab_size=10, num_classes=8)
    assert set(zip(table.d_model, table.num_heads)) == {(48, 3), (48, 4), (64, 4)}


def test_bucket_rule_equal_width_in_log():
    assert assign_buckets([10, 100, 1000]) == ["small", "medium", "large"]
    assert assign_buckets([10, 40, 101, 1000]) == ["small", "small", "medium", "large"]
    assert assign_buckets([5, 5]) == ["small", "small"]


def test_pairs_need_depth_and_narrowness_and_close_counts():
    table = pd.DataFrame(
        {
            "arch": ["a", "b", "c"],
            "num_layers": [4, 1, 4],
            "d_model": [32, 64, 128],
            "num_heads": [4, 4, 4],
            "num_params": [100, 110, 109],
            "bucket": ["small", "small", "small"],
        }
    )
    pairs = find_pairs(table)
    assert list(zip(pairs.deep_narrow, pairs.wide_shallow)) == [("a", "b")]  # c is not narrower than b
