import pytest

from llcgrok.config import (ConfigError, expand, is_sequence, load_params, params_from_sections, parse_set_option,
                            read_sections, resolve_run)
from llcgrok.seqparams import expand_seq, load_seq_params, resolve_seq_run


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_presets_load(repo_root):
    presets = sorted((repo_root / "params").glob("*.yaml"))
    assert {"reference", "ai_scientist", "quick", "wd_sweep", "perturbation"} <= {p.stem for p in presets}
    sequence = [p for p in presets if is_sequence(read_sections(p))]
    assert {"addition", "fraction_of_x"} <= {p.stem for p in sequence}
    for path in presets:
        if path in sequence:
            params = load_seq_params(path)
            assert resolve_seq_run(params).run_id and len(expand_seq(params)) >= 1
            with pytest.raises(ConfigError, match="sequence task"):
                load_params(path)
            continue
        params = load_params(path)
        assert resolve_run(params).run_id
        assert len(expand(params)) >= 1
    assert len(expand(load_params(repo_root / "params" / "ai_scientist.yaml"))) == 27 * 4 * 5


def test_partial_sections_merge_onto_defaults():
    params = params_from_sections(model={"d_model": 64}, train={"lr": "3e-4"})
    cfg = resolve_run(params)
    assert cfg.model.d_model == 64 and cfg.model.num_layers == 2  # default kept
    assert cfg.train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string


def test_sections_name_the_single_run_and_axes_fill_what_they_leave_out(tmp_path):
    path = _write(tmp_path, "task: {p: 13}\nmodel: {d_model: 48}\ntrain: {seed: 3}\n"
                            "grid:\n  axes: {model.num_layers: [4, 1], model.d_model: [32, 64], train.lr: [0.01, 0.1]}\n"
                            "  seeds: [7, 8]\n")
    params = load_params(path)
    cfg = resolve_run(params)
    # d_model and the seed are set by the sections: they beat the axes; the rest takes the first values.
    assert (cfg.model.num_layers, cfg.model.d_model, cfg.train.lr, cfg.train.seed) == (4, 48, 0.01, 3)
    cfg = resolve_run(params, {"model.num_layers": 2, "model.d_model": 64}, seed=5)  # --set and --seed beat both
    assert (cfg.model.num_layers, cfg.model.d_model, cfg.train.seed) == (2, 64, 5)
    # The sweep spans the grid whatever the sections say.
    assert {(c.model.num_layers, c.model.d_model, c.train.seed) for c in expand(params)} == {
        (n, d, s) for n in (4, 1) for d in (32, 64) for s in (7, 8)}
    assert params.explicit == {"task.p", "model.d_model", "train.seed"}


def test_every_presets_single_run_is_the_config_it_documents(repo_root):
    """Each preset's single run shows the phenomenon: the grid's first values (1x32 in quick.yaml,
    weight decay 0 in wd_sweep.yaml) do not grok, the sections' configs do (docs/results.md)."""
    expected = {
        "quick": ("x_plus_y-L1-d64-h4-s0", 0.5),  # groks near update 1,660 (tests/test_notebooks.py trains it)
        "reference": ("x_plus_y-L2-d128-h4-s0", 0.5),  # the reference run: grokked at 2,760
        "ai_scientist": ("x_plus_y-L2-d128-h4-s0", 0.5),
        "wd_sweep": ("x_plus_y-L1-d128-h4-s0", 1.0),  # weight decay 1 groks near 1,000; 0 never does
        "perturbation": ("x_plus_y-L1-d128-h4-s0", 1.0),
    }
    for name, (run_id, weight_decay) in expected.items():
        cfg = resolve_run(load_params(repo_root / "params" / f"{name}.yaml"))
        assert (cfg.run_id, cfg.train.weight_decay) == (run_id, weight_decay), name
    reference = resolve_run(load_params(repo_root / "params" / "reference.yaml"))
    study = resolve_run(load_params(repo_root / "params" / "ai_scientist.yaml"))
    assert (study.task, study.model, study.train) == (reference.task, reference.model, reference.train)
    cfg = resolve_run(load_params(repo_root / "params" / "ai_scientist.yaml"), {"model.num_layers": 4, "task.name": "x_div_y"}, seed=3)
    assert cfg.run_id == "x_div_y-L4-d128-h4-s3"


def test_study_presets_fix_nbeta(repo_root):
    """LLC values compare across runs only at one n*beta: every study preset fixes it, and
    calibrates at that n*beta only."""
    for name in ("quick", "ai_scientist", "wd_sweep", "perturbation"):
        llc = load_params(repo_root / "params" / f"{name}.yaml").base.llc
        assert llc.nbeta is not None and llc.calibration.nbetas in (None, [llc.nbeta]), name  # None: llc.nbeta only


def _float_keys(cls, prefix=""):
    import dataclasses
    import typing

    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if typing.get_origin(tp) is typing.Union:  # Optional[X]: X
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        if dataclasses.is_dataclass(tp):
            yield from _float_keys(tp, f"{prefix}{f.name}.")
        elif tp is float or (typing.get_origin(tp) is list and typing.get_args(tp) == (float,)):
            yield f"{prefix}{f.name}", tp is not float


def test_nan_and_inf_are_rejected_for_every_float_key():
    from llcgrok.config import RunConfig

    keys = list(_float_keys(RunConfig))
    assert {"llc.epsilon", "llc.nbeta", "train.lr", "llc.calibration.epsilons", "task.training_fraction"} <= {k for k, _ in keys}
    params = params_from_sections()
    for key, is_list in keys:
        for text in ("nan", "inf", "-inf", ".nan", "-.inf"):  # as --set reads them (YAML, or float() of the text)
            option = f"{key}=[{text}]" if is_list else f"{key}={text}"
            with pytest.raises(ConfigError, match=rf"'{key}(\[0\])?' must be finite") as info:
                resolve_run(params, dict([parse_set_option(option)]))
            assert "\n" not in str(info.value)


def test_an_empty_params_file_is_refused(tmp_path):
    for text in ("", "# only a comment\n", "{}\n"):
        with pytest.raises(ConfigError, match="the params file is empty"):
            load_params(_write(tmp_path, text))


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
