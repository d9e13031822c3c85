"""Training of the modular tasks with the reference hyperparameters: their hooks of the
one training loop (:mod:`llcgrok.loop`: checkpoints, metrics, resume, early stop).

Semantics follow the reference template:
* batches of ``batch_size`` training examples drawn with replacement;
* the learning rate ramps linearly, ``lr * min(s / warmup_steps, 1)`` at update s (0-based);
* every ``eval_every`` updates a metrics row: train loss/accuracy averaged over the
  training batches since the last row (they cost nothing extra: the forward pass of the
  step already made them), and validation loss/accuracy on ``eval_batches x batch_size``
  validation examples drawn with replacement, in one forward pass without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from . import loop
from . import metrics as metrics_mod
from . import runs
from .config_sections import RunConfig
from .device import resolve_device
from .fingerprints import FingerprintRecorder
from .loop import TrainingDiverged, checkpoint_steps, learning_rate  # noqa: F401  (re-exported: imported from here)
from .seeding import BATCHES, EVALUATION, INIT, PERTURBATION, rng_seed
from .model import GrokTransformer, build_model
from .tasks import TaskData, make_task

METRIC_COLUMNS = ["step", "train_loss", "train_acc", "val_loss", "val_acc"]


@dataclass
class TrainResult:
    model: GrokTransformer
    metrics: pd.DataFrame
    summary: dict
    task: TaskData
    fingerprints: pd.DataFrame | None = None  # with train.fingerprint_every: step, q05 ... q95


def _training_sections(config: dict) -> dict:
    # What determines the trained weights; the llc section may change between sessions.
    # Keys added to a section since a state was saved take their defaults.
    defaults = RunConfig().to_dict()
    return {k: {**defaults[k], **config[k]} if isinstance(config.get(k), dict) else config.get(k)
            for k in ("task", "model", "train")}




@torch.no_grad()
def perturb_initial_weights(model: torch.nn.Module, scale: float, seed: int) -> None:
    """Add Gaussian noise to every parameter tensor, with standard deviation ``scale`` times
    the tensor's RMS (tensors that are all zero, such as fresh biases, stay zero). The
    noise comes from a generator of its own, seeded by ``seed``: the run's other random
    streams are untouched, and ``scale == 0`` leaves the model as it was."""
    if scale == 0:
        return
    generator = torch.Generator().manual_seed(rng_seed(seed, PERTURBATION))
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        rms = param.detach().double().pow(2).mean().sqrt().item()
        param.add_((scale * rms * noise).to(param.dtype).to(param.device))


def eval_chunk_size(device: torch.device) -> int:
    """Rows per forward pass in evaluation: on a CPU, chunks of 512 keep the FFN's
    activations in cache (measured 1.3-1.4x faster than one 4096-row pass at d 128-256);
    an accelerator takes everything at once."""
    return 512 if device.type == "cpu" else 8192


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk: int | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all of ``inputs``.

    With ``weights`` (how many times each row counts), the means are weighted: this is how
    a sample drawn with replacement is evaluated once per distinct row.
    """
    was_training = model.training
    model.eval()
    if chunk is None:
        chunk = eval_chunk_size(inputs.device)
    loss_sum = torch.zeros((), device=inputs.device)
    correct = torch.zeros((), device=inputs.device)
    for start in range(0, len(inputs), chunk):
        logits = model(inputs[start : start + chunk])
        tgt = targets[start : start + chunk]
        if weights is None:
            loss_sum += F.cross_entropy(logits, tgt, reduction="sum")
            correct += (logits.argmax(-1) == tgt).sum()
        else:
            w = weights[start : start + chunk].to(logits.dtype)
            loss_sum += (F.cross_entropy(logits, tgt, reduction="none") * w).sum()
            correct += ((logits.argmax(-1) == tgt).to(w.dtype) * w).sum()
    model.train(was_training)
    total = torch.tensor(float(len(inputs)), device=inputs.device) if weights is None else weights.sum().to(loss_sum.dtype)
    loss_value, correct_value, total_value = torch.stack([loss_sum, correct, total]).tolist()  # one device sync
    return loss_value / total_value, correct_value / total_value


def evaluate_draws(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy over ``inputs[draws]``, a sample drawn with replacement.

    Each distinct row is evaluated once and weighted by how often it was drawn: the same
    numbers as evaluating every draw (up to float summation order), for less work (4,096
    draws from the 4,704 validation pairs of p = 97 hold about 2,740 distinct rows).
    """
    counts = torch.bincount(draws, minlength=len(inputs))
    rows = counts.nonzero().squeeze(1)
    return evaluate(model, inputs[rows], targets[rows], weights=counts[rows])


@dataclass(kw_only=True)
class _Modular(loop.Training):
    """A modular run: batches of training pairs, cross-entropy, a validation sample per row."""

    cfg: RunConfig
    device: torch.device
    task: TaskData
    data: TaskData  # on the device
    recorder: FingerprintRecorder | None

    def lr(self, update: int) -> float:
        return learning_rate(self.cfg.train, update)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.data.train_targets), (self.cfg.train.batch_size,), generator=self.generators["batch_gen"])
        idx = idx.to(self.device, non_blocking=True)
        return self.data.train_inputs[idx], self.data.train_targets[idx]

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's cross-entropy and its count of correct answers."""
        logits = self.model(inputs)
        return F.cross_entropy(logits, targets), (logits.detach().argmax(-1) == targets).sum()

    def eval_row(self, step: int, sums: list[float], batches: int) -> dict:
        tc, data = self.cfg.train, self.data
        train_loss, train_acc = sums[0] / batches, sums[1] / (batches * tc.batch_size)
        vidx = torch.randint(len(data.val_targets), (tc.eval_batches * tc.batch_size,), generator=self.generators["eval_gen"])
        val_loss, val_acc = evaluate_draws(self.model, data.val_inputs, data.val_targets, vidx.to(self.device))
        return {"step": step, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}

    def postfix(self, row: dict) -> dict:
        return {"train_acc": f"{row['train_acc']:.3f}", "val_acc": f"{row['val_acc']:.3f}"}

    def summary(self, table: pd.DataFrame, step: int, elapsed: float) -> dict:
        return {
            "run_id": self.cfg.run_id, "num_params": self.model.num_params, **metrics_mod.summarize(table),
            "num_steps_run": step, "stopped_early": step < self.cfg.train.num_steps, "wall_time_s": round(elapsed, 3),
            "ms_per_step": round(1000 * elapsed / max(step, 1), 3), "device": str(self.device),
        }

    def prepare(self, run_dir: Path, force: bool) -> bool:
        return runs.prepare_run_dir(run_dir, runs.training_identity(self.cfg), force=force)

    def identity(self) -> dict:
        return {"run_config": self.cfg.to_dict()}

    def resumes(self, state: dict) -> bool:
        return _training_sections(state.get("run_config", {})) == _training_sections(self.cfg.to_dict())

    def write_config(self, run_dir: Path) -> None:
        runs.write_config(run_dir, self.cfg)

    def save_checkpoint(self, path: Path, step: int) -> None:
        runs.save_checkpoint(path, self.model, step, self.cfg)

    # The fingerprints: their rows travel in state.pt (an empty list without a recorder).
    def extra_state(self) -> dict:
        return {"fingerprint_rows": self.recorder.rows if self.recorder is not None else []}

    def restore(self, state: dict) -> None:
        if self.recorder is not None:
            self.recorder.rows = list(state.get("fingerprint_rows", []))

    def write_files(self, run_dir: Path) -> None:
        if self.recorder is not None:
            self.recorder.write(run_dir)


def _grokked(row: dict) -> bool:
    return row["val_acc"] > metrics_mod.THRESHOLD  # the transition of metrics.steps_to_grokking


def adamw(params, tc, device: torch.device) -> torch.optim.AdamW:
    """The modular tasks' optimizer (also the vectorised seeds', on their stacked weights):
    fused where torch has the fused kernel, which changes the last bits, so one place."""
    return torch.optim.AdamW(params, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
                             fused=device.type in ("cpu", "cuda"))


def _start(cfg: RunConfig) -> _Modular:
    tc = cfg.train
    device = resolve_device(tc.device)
    task = make_task(cfg.task, seed=tc.seed)
    data = task.to(device)
    torch.manual_seed(rng_seed(tc.seed, INIT))
    model = build_model(cfg.model, task.vocab_size, task.num_classes, task.seq_len).to(device)
    perturb_initial_weights(model, tc.init_perturbation, tc.perturbation_seed)
    optimizer = adamw(model.parameters(), tc, device)
    generators = {"batch_gen": torch.Generator().manual_seed(rng_seed(tc.seed, BATCHES)),
                  "eval_gen": torch.Generator().manual_seed(rng_seed(tc.seed, EVALUATION))}
    recorder = FingerprintRecorder(cfg, data.val_inputs, data.val_targets) if tc.fingerprint_every else None
    run = _Modular(
        run_id=cfg.run_id, model=model, optimizer=optimizer, generators=generators, columns=METRIC_COLUMNS,
        num_steps=tc.num_steps, eval_every=tc.eval_every, save_points=set(checkpoint_steps(tc)), sums_on=device,
        loss_name="train loss", stop=loop.EarlyStop(tc.num_steps, tc.early_stop_delay, _grokked),
        cfg=cfg, device=device, task=task, data=data, recorder=recorder,
    )
    if recorder is not None:
        def record(step: int) -> None:
            if recorder.due(step):
                recorder.record(model, step)
        run.step_hooks.append(record)
    return run


def train(cfg: RunConfig, run_dir: str | Path | None = None, *, quiet: bool = False, resume: bool = True,
          force: bool = False) -> TrainResult:
    """Train one config. With ``run_dir``, write config, checkpoints, metrics and summary
    there and resume from its last checkpoint if one exists. A directory holding another
    config is refused (:class:`llcgrok.runs.RunDirConflict`); ``force`` replaces whatever it
    holds, and ``resume=False`` starts this config over, leaving nothing of the earlier try."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run = _start(cfg)
    table, summary = loop.fit(run, run_dir, quiet=quiet, resume=resume, force=force)
    return TrainResult(model=run.model, metrics=table, summary=summary, task=run.task,
                       fingerprints=run.recorder.frame() if run.recorder is not None else None)


def ensure_trained(cfg: RunConfig, run_dir: Path, quiet: bool = False, force: bool = False) -> tuple[pd.DataFrame, dict]:
    """Train the run unless ``run_dir`` holds it finished (resuming an interrupted one);
    return its metrics table and summary. A directory holding another config is refused
    (:class:`llcgrok.runs.RunDirConflict`); ``force`` replaces it, or retrains this one."""
    run_dir = Path(run_dir)
    if not force and runs.prepare_run_dir(run_dir, runs.training_identity(cfg)) and runs.is_trained(run_dir):
        return runs.read_metrics(run_dir), runs.read_summary(run_dir)
    result = train(cfg, run_dir, quiet=quiet, force=force)
    return result.metrics, result.summary
