"""What the notebooks call: parameters in, a validated config and a run directory out.

papermill's ``-f params/X.yaml`` injects each top-level section as one notebook variable
and replaces it whole (``-f``, ``-y`` and ``-p`` merge at the top level only). So a notebook
hands its sections to :func:`config_from_parameters`, which deep-merges them onto the
library defaults, exactly as ``llcgrok train``/``sweep`` read the same file, then applies
``overrides`` (``"dotted.key=value"`` strings, as ``--set``) last. A notebook's section
parameters default to None: its own cell never fills in a section a params file leaves out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from . import runs
from .config import SECTIONS, ConfigError, Params, RunConfig, dump_yaml, params_from_sections, parse_overrides, read_sections, resolve_run

REPO_ROOT = Path(__file__).resolve().parent.parent  # a clone: params/ and notebooks/ beside the package


def deep_merge(base: Any, extra: Any) -> Any:
    """``extra`` merged onto ``base`` key by key at every depth; None leaves ``base``."""
    if extra is None:
        return base
    if isinstance(base, Mapping) and isinstance(extra, Mapping):
        return {**base, **{k: deep_merge(base.get(k), v) for k, v in extra.items()}}
    return extra


def _find_params(path: str | os.PathLike) -> Path:
    """``path`` as given, else relative to the repository (Jupyter runs a notebook in notebooks/)."""
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{path}: params file not found (looked in {Path.cwd()} and {REPO_ROOT})")


def params_from_parameters(
    params_file: str | os.PathLike | None = None,
    *,
    task: Mapping | None = None,
    model: Mapping | None = None,
    train: Mapping | None = None,
    llc: Mapping | None = None,
    grid: Mapping | None = None,
    fallback: str | os.PathLike | Mapping | None = None,
) -> Params:
    """The study (sections and grid) from a notebook's parameters, validated.

    The sections given (papermill's injected ones) deep-merge onto ``params_file``'s, or onto
    the library defaults without one. ``fallback`` (a params file, or a mapping of sections)
    stands in for ``params_file`` only when neither it nor any section is given: a notebook
    opened in Jupyter without parameters then runs a small preset, while ``papermill -f X``
    gets exactly X.
    """
    given = {"task": task, "model": model, "train": train, "llc": llc, "grid": grid}
    if params_file is None and all(v is None for v in given.values()) and fallback is not None:
        params_file, given = (None, dict(fallback)) if isinstance(fallback, Mapping) else (fallback, given)
    base, source = {}, "notebook parameters"
    if params_file is not None:
        path = _find_params(params_file)
        base, source = read_sections(path), str(path)
    unknown = [k for k in given if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown section '{unknown[0]}' (known: {', '.join(SECTIONS)})")
    merged = {name: deep_merge(base.get(name), given.get(name)) for name in SECTIONS}
    return params_from_sections(**merged, source=source)


def config_from_parameters(
    params_file: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] | str = (),
    fallback: str | os.PathLike | Mapping | None = None,
    **sections: Mapping | None,
) -> RunConfig:
    """One run's config from a notebook's parameters: :func:`params_from_parameters`, then
    one run of it as ``llcgrok train`` picks it (:func:`llcgrok.config.resolve_run`), then
    ``overrides`` applied last."""
    params = params_from_parameters(params_file, fallback=fallback, **sections)
    return resolve_run(params, parse_overrides(overrides, "overrides"))


def show_config(config: Any, **extra: Any) -> None:
    """Print a resolved config (``RunConfig``, ``Params`` or ``SeqConfig``, plus ``extra``
    entries) as YAML, so that every executed notebook records what it ran."""
    data = {**config.to_dict(), **extra}
    print(f"# resolved config\n{dump_yaml(data)}", end="")


def seq_parameters(config: Mapping | None, llc: Mapping | None, overrides: Sequence[str] | str = ()) -> tuple[Any, dict]:
    """A sequence-task notebook's ``(SeqConfig, LLC keyword arguments)``: ``config`` merged
    onto SeqConfig's defaults, ``llc`` the keywords of ``sequence_llc_trajectory``, then
    ``overrides``: ``"num_steps=500"``, ``"model.d_model=16"``; ``"llc.num_draws=50"`` sets an
    LLC keyword."""
    from .seqtrain import seq_config
    from .sequence_llc import KNOWN_KEYWORDS

    config, llc = dict(config or {}), dict(llc or {})
    for key, value in parse_overrides(overrides, "overrides").items():
        if key.startswith("llc."):
            llc[key[4:]] = value
        else:
            config = deep_merge(config, _nested(key, value))
    known = list(KNOWN_KEYWORDS)
    unknown = [k for k in llc if k not in known]
    if unknown:
        raise ConfigError(f"notebook parameters: unknown llc key '{unknown[0]}' (known: {', '.join(known)})")
    return seq_config(config, source="notebook parameters"), llc


def _nested(dotted: str, value: Any) -> dict:
    *parents, last = dotted.split(".")
    out: dict = {last: value}
    for part in reversed(parents):
        out = {part: out}
    return out


def run_dir_for(cfg: RunConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """``run_dir`` if given, else ``outputs/runs/<run_id>`` under the working directory."""
    return Path(run_dir) if run_dir else Path("outputs") / "runs" / cfg.run_id


def ensure_trained(cfg: RunConfig, run_dir: Path, quiet: bool = False, force: bool = False) -> tuple[pd.DataFrame, dict]:
    """Train the run unless ``run_dir`` holds it finished (resuming an interrupted one);
    return its metrics table and summary. A directory holding another config is refused
    (:class:`llcgrok.runs.RunDirConflict`); ``force`` replaces it, or retrains this one."""
    from .train import train

    run_dir = Path(run_dir)
    if not force and runs.prepare_run_dir(run_dir, runs.training_identity(cfg)) and runs.is_trained(run_dir):
        return runs.read_metrics(run_dir), runs.read_summary(run_dir)
    result = train(cfg, run_dir, quiet=quiet, force=force)
    return result.metrics, result.summary


def summary_frame(summary: Mapping) -> pd.DataFrame:
    """A run summary as a two-column table for display."""
    return pd.DataFrame({"figure": list(summary), "value": [summary[k] for k in summary]})
