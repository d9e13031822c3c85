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

from .seqparams import legacy_section_key, llc_section, llc_with_overrides, resolve_seq_run, seq_params_from_sections
from .train import ensure_trained  # noqa: F401  (the notebooks call it nb.ensure_trained)
from .config import deep_merge, dump_yaml, params_from_sections, parse_overrides, read_sections, resolve_run
from .config_sections import SECTIONS, ConfigError, Params, RunConfig

REPO_ROOT = Path(__file__).resolve().parent.parent  # a clone: params/ and notebooks/ beside the package


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


def seq_parameters(
    params_file: str | os.PathLike | None = None,
    *,
    config: Mapping | None = None,
    llc: Mapping | None = None,
    overrides: Sequence[str] | str = (),
    fallback: str | os.PathLike | None = None,
    **sections: Mapping | None,
) -> tuple[Any, Any]:
    """A sequence-task notebook's ``(SeqConfig, LLCConfig)``.

    The sections (``task``, ``model``, ``train``, ``llc``, ``grid``: papermill's ``-f
    params/addition.yaml``) deep-merge onto ``params_file``'s, then onto ``config``, the flat
    :class:`~llcgrok.seqtrain.SeqConfig` mapping of earlier notebooks; one run is resolved as
    ``llcgrok train`` resolves it. ``llc`` is an llc section or the flat keywords of
    :mod:`llcgrok.sequence_llc`. ``overrides`` last: ``"train.num_steps=500"``,
    ``"llc.num_draws=50"`` (the flat ``"num_steps=500"`` too). ``fallback`` stands in for
    ``params_file`` when nothing at all is given (Jupyter without parameters).
    """
    given = {name: sections.pop(name, None) for name in ("task", "model", "train", "grid")}
    if sections:
        raise ConfigError(f"notebook parameters: unknown section '{next(iter(sections))}' (known: {', '.join(SECTIONS)})")
    given["llc"] = llc_section(llc)
    if params_file is None and config is None and all(v is None for v in given.values()) and fallback is not None:
        params_file = fallback
    base, source = {}, "notebook parameters"
    if params_file is not None:
        path = _find_params(params_file)
        base, source = read_sections(path), str(path)
    merged = {name: deep_merge(base.get(name), given.get(name)) for name in SECTIONS}
    params = seq_params_from_sections(**merged, source=source, flat_base=config)
    pairs = {legacy_section_key(k): v for k, v in parse_overrides(overrides, "overrides").items()}
    llc_pairs = {k: v for k, v in pairs.items() if k.startswith("llc.")}
    cfg = resolve_seq_run(params, {k: v for k, v in pairs.items() if k not in llc_pairs})
    return cfg, llc_with_overrides(params.llc, llc_pairs, "overrides")


def run_dir_for(cfg: RunConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """``run_dir`` if given, else ``outputs/runs/<run_id>`` under the working directory."""
    return Path(run_dir) if run_dir else Path("outputs") / "runs" / cfg.run_id


def summary_frame(summary: Mapping) -> pd.DataFrame:
    """A run summary as a two-column table for display."""
    return pd.DataFrame({"figure": list(summary), "value": [summary[k] for k in summary]})
