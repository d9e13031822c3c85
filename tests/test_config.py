import pytest

from llcgrok.config import ConfigError, expand, load_params, params_from_sections, resolve_run


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_presets_load(repo_root):
    presets = sorted((repo_root / "params").glob("*.yaml"))
    assert {"reference", "ai_scientist", "quick", "wd_sweep", "perturbation"} <= {p.stem for p in presets}
    for path in presets:
        params = load_params(path)
        assert resolve_run(params).run_id
        assert len(expand(params)) >= 1
    assert len(expand(load_params(repo_root / "params" / "ai_scientist.yaml"))) == 27 * 4 * 5


def test_partial_sections_merge_onto_defaults():
    params = params_from_sections(model={"d_model": 64}, train={"lr": "3e-4"})
    cfg = resolve_run(params)
    assert cfg.model.d_model == 64 and cfg.model.num_layers == 2  # default kept
    assert cfg.train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string


def test_first_axis_value_then_overrides(repo_root):
    params = load_params(repo_root / "params" / "ai_scientist.yaml")
    cfg = resolve_run(params)
    assert (cfg.task.name, cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads, cfg.train.seed) == (
        "x_plus_y", 1, 64, 2, 0)
    cfg = resolve_run(params, {"model.num_layers": 4, "task.name": "x_div_y"}, seed=3)
    assert cfg.run_id == "x_div_y-L4-d64-h2-s3"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model:\n  depth: 3\n", "unknown key 'model.depth'"),
        ("modle:\n  num_layers: 3\n", "unknown key 'modle'"),
        ("model:\n  num_layers: three\n", "'model.num_layers' must be int"),
        ("model:\n  d_model: 128\n  num_heads: 3\n", "'model.num_heads' (3) must divide"),
        ("task:\n  name: x_div_y\n  p: 96\n", "'task.p' must be prime"),
        ("task:\n  training_fraction: 1.5\n", "'task.training_fraction' must lie in (0, 1)"),
        ("task:\n  training_fraction: 0\n", "'task.training_fraction' must lie in (0, 1)"),
        ("grid:\n  axes:\n    model.d_model: []\n", "is empty"),
        ("grid:\n  seeds: []\n", "'grid.seeds' is empty"),
        ("grid:\n  axes:\n    model.width: [1]\n", "unknown grid axis 'model.width'"),
        ("llc:\n  epsilon: -1.0e-4\n", "'llc.epsilon' must be > 0"),
        ("llc:\n  epsilon: 0\n", "'llc.epsilon' must be > 0"),
        ("llc:\n  nbeta: 0\n", "'llc.nbeta' must be > 0"),
        ("train:\n  num_steps: 0\n", "'train.num_steps' must be > 0"),
        ("llc:\n  num_draws: -5\n", "'llc.num_draws' must be > 0"),
        ("train: [1, 2]\n", "'train' must be a mapping"),
        ("train:\n  fingerprint_every: 0\n", "'train.fingerprint_every' must be > 0"),
        ("train:\n  fingerprint_every: ten\n", "'train.fingerprint_every' must be int"),
        ("train:\n  fingerprint_probes: -1\n", "'train.fingerprint_probes' must be > 0"),
        ("train:\n  init_perturbation: -0.1\n", "'train.init_perturbation' must be >= 0"),
        ("train:\n  init_perturbation: .inf\n", "'train.init_perturbation' must be finite"),
        ("train:\n  perturbation_seed: -2\n", "'train.perturbation_seed' must be >= 0"),
        ("grid:\n  axes:\n    train.init_perturbation: [0.01, -1.0]\n", "'train.init_perturbation' must be >= 0"),
        ("model: {num_layers: [\n", "not valid YAML"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_grid_drops_heads_that_do_not_divide(tmp_path):
    path = _write(tmp_path, "grid:\n  axes:\n    model.d_model: [48, 64]\n    model.num_heads: [3, 4]\n")
    shapes = {(c.model.d_model, c.model.num_heads) for c in expand(load_params(path))}
    assert shapes == {(48, 3), (48, 4), (64, 4)}
