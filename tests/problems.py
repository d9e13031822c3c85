"""Small problems shared by the LLC and calibration tests."""

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


def train_tiny_run(run_dir):
    """A 30-step x_plus_y mod 11 run with 4 checkpoints (seconds on a CPU)."""
    cfg = RunConfig()
    cfg.task.p = 11
    cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads = 1, 16, 2
    cfg.train.num_steps, cfg.train.batch_size, cfg.train.eval_batches, cfg.train.num_checkpoints = 30, 64, 1, 3
    train(cfg, run_dir, quiet=True)
    return run_dir
