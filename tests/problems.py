"""Small problems shared by the tests: tiny configs and runs, and models with a known LLC."""

import torch

from llcgrok.config import RunConfig
from llcgrok.train import train


def regression(n=5000, k=4, m=2, seed=0):
    """Linear regression fitted by least squares: a regular model, lambda = d/2 = k*m/2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    y = x @ torch.randn(k, m, generator=g) + 0.5 * torch.randn(n, m, generator=g)
    model = torch.nn.Linear(k, m, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, (x, y)


def tiny_config(steps=60, num_layers=1, **train_kw) -> RunConfig:
    """x_plus_y mod 13 on a d_model 16, 2-head model: trains in a second or two on a CPU."""
    cfg = RunConfig()
    cfg.task.p = 13
    cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads = num_layers, 16, 2
    cfg.train.num_steps, cfg.train.batch_size, cfg.train.eval_batches = steps, 64, 2
    cfg.train.num_checkpoints = 5
    for key, value in train_kw.items():
        setattr(cfg.train, key, value)
    return cfg


def train_tiny_run(run_dir):
    """A 30-step x_plus_y mod 11 run with 4 checkpoints (seconds on a CPU)."""
    cfg = RunConfig()
    cfg.task.p = 11
    cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads = 1, 16, 2
    cfg.train.num_steps, cfg.train.batch_size, cfg.train.eval_batches, cfg.train.num_checkpoints = 30, 64, 1, 3
    train(cfg, run_dir, quiet=True)
    return run_dir
