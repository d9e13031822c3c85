"""llcgrok: grokking across model capacity, seen through the local learning coefficient."""

from .config import load_params, params_from_sections, resolve_run
from .config_sections import ConfigError, Params, RunConfig

__version__ = "0.1.0"

__all__ = ["ConfigError", "Params", "RunConfig", "load_params", "params_from_sections", "resolve_run", "__version__"]
