"""Fingerprint recording during training, initial-weight perturbations, the notebook."""

import json

import numpy as np
import pandas as pd
import papermill
import pytest
import torch

from problems import tiny_config

from llcgrok import fingerprints as fpr
from llcgrok import runs
from llcgrok.model import build_model
from llcgrok.tasks import make_task
from llcgrok.seeding import INIT, rng_seed
from llcgrok.train import checkpoint_steps, perturb_initial_weights, train


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fp") / "run"
    result = train(tiny_config(fingerprint_every=5), run_dir, quiet=True)
    return run_dir, result


def test_fingerprint_files(recorded):
    run_dir, result = recorded
    table = pd.read_csv(run_dir / fpr.FINGERPRINTS_CSV)
    assert list(table.columns) == ["step"] + [f"q{q:02d}" for q in range(5, 100, 5)]
    assert table["step"].tolist() == list(range(0, 61, 5))
    values = table[fpr.QUANTILE_COLUMNS].to_numpy()
    assert np.isfinite(values).all() and (values <= 0).all()  # log-probabilities
    assert (np.diff(values, axis=1) >= 0).all()  # quantiles rise with their level
    pd.testing.assert_frame_equal(table, result.fingerprints, check_dtype=False)

    probes = json.loads((run_dir / fpr.PROBES_JSON).read_text())
    n_val = len(result.task.val_targets)
    indices = probes["probe_indices"]
    assert len(indices) == len(set(indices)) == min(100, n_val) == probes["num_probes"]
    assert all(0 <= i < n_val for i in indices)
    assert probes["steps"] == table["step"].tolist()
    assert probes["quantiles"] == pytest.approx([0.05 * i for i in range(1, 20)])


def test_fingerprint_values_are_those_of_the_checkpoints(recorded):
    """The row at a checkpoint's step is the quantiles of log p(correct) of that
    checkpoint's weights on the recorded probes."""
    run_dir, result = recorded
    table = fpr.read_fingerprints(run_dir)
    indices = torch.tensor(fpr.read_probes(run_dir)["probe_indices"])
    task = result.task
    for step, path in runs.list_checkpoints(run_dir):
        model, _ = runs.load_checkpoint(path)
        logp = torch.log_softmax(model.eval()(task.val_inputs[indices]), -1).gather(1, task.val_targets[indices, None])
        expected = np.quantile(logp.squeeze(1).detach().double().numpy(), fpr.QUANTILES)
        row = table.loc[table["step"] == step, fpr.QUANTILE_COLUMNS].to_numpy()[0]
        np.testing.assert_allclose(row, expected, rtol=1e-6, atol=1e-7)


def test_probes_are_a_seeded_draw():
    a, b = fpr.probe_indices(500, 100, seed=0), fpr.probe_indices(500, 100, seed=0)
    assert torch.equal(a, b) and len(set(a.tolist())) == 100
    assert not torch.equal(a, fpr.probe_indices(500, 100, seed=1))
    assert len(fpr.probe_indices(40, 100, seed=0)) == 40  # fewer validation examples: all of them


def test_fingerprints_leave_training_bit_identical(recorded):
    _, with_fp = recorded
    plain = train(tiny_config(), quiet=True)
    assert plain.fingerprints is None
    pd.testing.assert_frame_equal(plain.metrics, with_fp.metrics)
    for a, b in zip(plain.model.state_dict().values(), with_fp.model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_gives_the_uninterrupted_fingerprints(recorded, tmp_path, monkeypatch):
    """Killed between checkpoints (fingerprints up to step 40 recorded, the state at 40
    never saved): the resumed run has every step once and the uninterrupted values."""
    full_dir, _ = recorded
    original = runs.save_state

    def die_before_40(run_dir, state):
        if state["step"] >= 40:
            raise KeyboardInterrupt
        original(run_dir, state)

    monkeypatch.setattr(runs, "save_state", die_before_40)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(fingerprint_every=5), tmp_path, quiet=True)
    on_disk = pd.read_csv(tmp_path / fpr.FINGERPRINTS_CSV)
    last_saved = max(s for s in checkpoint_steps(tiny_config().train) if s < 40)
    assert on_disk["step"].max() == last_saved < 35  # written with the last saved state, as metrics.csv is
    monkeypatch.setattr(runs, "save_state", original)
    resumed = train(tiny_config(fingerprint_every=5), tmp_path, quiet=True)
    expected = pd.read_csv(full_dir / fpr.FINGERPRINTS_CSV)
    pd.testing.assert_frame_equal(expected, pd.read_csv(tmp_path / fpr.FINGERPRINTS_CSV))
    pd.testing.assert_frame_equal(expected, resumed.fingerprints, check_dtype=False)
    assert fpr.read_probes(tmp_path)["steps"] == expected["step"].tolist()


def test_perturbation_zero_is_the_plain_run_and_nonzero_moves_the_start(tmp_path):
    cfg = tiny_config(10)
    task = make_task(cfg.task, seed=0)

    def initial(scale, seed):
        torch.manual_seed(rng_seed(0, INIT))
        model = build_model(cfg.model, task.vocab_size, task.num_classes, task.seq_len)
        perturb_initial_weights(model, scale, seed)
        return model.state_dict()

    plain = initial(0.0, 0)
    assert all(torch.equal(a, b) for a, b in zip(plain.values(), initial(0.0, 7).values()))
    small = initial(0.01, 1)
    assert all(torch.equal(a, b) for a, b in zip(small.values(), initial(0.01, 1).values()))
    assert not torch.equal(small["head.weight"], initial(0.01, 2)["head.weight"])
    for name, w in plain.items():
        delta = (small[name] - w).norm() / w.norm() if w.norm() > 0 else small[name].norm()
        if w.norm() == 0:
            assert delta == 0, name  # zero biases stay zero
        elif w.numel() >= 64:
            assert 0.007 < delta < 0.013, (name, float(delta))  # relative to the tensor's RMS
    # Training applies it right after init (checkpoint 0), and scale 0 trains as before.
    train(tiny_config(10, init_perturbation=0.01, perturbation_seed=1), tmp_path, quiet=True)
    model0, _ = runs.load_checkpoint(runs.checkpoint_path(tmp_path, 0))
    assert all(torch.equal(a, small[k]) for k, a in model0.state_dict().items())
    a = train(tiny_config(20), quiet=True)
    b = train(tiny_config(20, init_perturbation=0.0, perturbation_seed=5), quiet=True)
    pd.testing.assert_frame_equal(a.metrics, b.metrics)


def test_vectorised_ensemble_refuses_fingerprints():
    from llcgrok.ensemble import train_ensemble

    with pytest.raises(ValueError, match="fingerprint_every"):
        train_ensemble(tiny_config(fingerprint_every=5), [0, 1], vectorize=True)


@pytest.mark.slow
def test_fingerprints_notebook(tmp_path, repo_root):
    out = tmp_path / "study"
    parameters = {
        "task": {"name": "x_plus_y", "p": 11},
        "model": {"num_layers": 1, "d_model": 16, "num_heads": 2},
        "train": {"num_steps": 50, "batch_size": 64, "eval_batches": 1, "num_checkpoints": 3, "fingerprint_every": 5},
        "overrides": ["train.num_steps=60"],  # applied to every config of the study: 13 fingerprints below
        "llc": {
            "num_chains": 1, "num_draws": 8, "batch_size": 32, "cores": 1, "num_burnin_steps": 5, "curvature_probes": 2,
            "calibration": {"epsilons": [1.0e-4, 1.0e-3], "nbetas": [10.0], "localizations": [100.0]},
        },
        "grid": {},
        "weight_decays": [0.0, 1.0],
        "seeds": [0],
        "n_delays": 4,
        "rank": 3,
        "out_dir": str(out),
        "quiet": True,
    }
    papermill.execute_notebook(
        str(repo_root / "notebooks" / "fingerprints.ipynb"), str(tmp_path / "fingerprints.ipynb"),
        parameters=parameters, cwd=str(tmp_path), progress_bar=False, kernel_name="python3",
    )
    dirs = sorted((out / "runs").iterdir())
    assert [d.name for d in dirs] == ["x_plus_y-L1-d16-h2-weight_decay0.0-s0", "x_plus_y-L1-d16-h2-weight_decay1.0-s0"]
    for d in dirs:
        spectrum = pd.read_csv(d / "dmd_eigenvalues.csv")
        assert 1 <= len(spectrum) <= 3 and (spectrum["n_delays"] == 4).all()
        assert (d / "llc.csv").exists() and len(pd.read_csv(d / "fingerprints.csv")) == 13
    for name in ("fingerprints.png", "dmd_spectra.png"):
        assert (out / "figures" / name).stat().st_size > 1000
