"""Every figure the notebooks and the report show. Each function takes tables (DataFrames)
and returns a matplotlib Figure built without pyplot's global state (safe under Agg,
papermill and threads); nothing is shown or saved unless asked (:func:`save_figure`).

Modules: ``calibration`` (the sampler: calibration grids, SGLD traces), ``ladder`` (the localization ladder), ``trajectories``
(one run over training), ``studies`` (a sweep: buckets, pairs, the LLC against the losses
and around grokking), ``capacity`` (the headline figures against parameter count, and the
published baseline), ``fingerprints`` (fingerprints and DMD spectra), ``sequence`` (a sweep of the
sequence tasks: the outcome and the LLC against parameter count, LLC trajectories). Every figure is importable from
here: ``from llcgrok import plots; plots.plot_llc_vs_accuracy(...)``."""

from ._common import FLAG_LABELS, FLAG_MARKERS, figure_formats, save_figure
from .calibration import plot_calibration_heatmap, plot_calibration_overview, plot_checkpoint_traces, plot_loss_traces
from .capacity import plot_capacity, plot_grokking_vs_baseline
from .fingerprints import plot_dmd_spectra, plot_fingerprint_bands
from .ladder import plot_calibration_ladder
from .sequence import plot_seq_capacity, plot_seq_llc_vs_params, plot_seq_trajectories
from .studies import (
    plot_aligned_curves,
    plot_bucket_curves,
    plot_llc_vs_loss,
    plot_pairs,
    plot_steps_by_arch,
)
from .trajectories import plot_llc_comparison, plot_llc_vs_accuracy, plot_training_curves

__all__ = [
    "FLAG_LABELS", "FLAG_MARKERS", "figure_formats", "save_figure",
    "plot_calibration_heatmap", "plot_calibration_ladder", "plot_calibration_overview", "plot_checkpoint_traces", "plot_loss_traces",
    "plot_dmd_spectra", "plot_fingerprint_bands",
    "plot_aligned_curves", "plot_bucket_curves", "plot_capacity", "plot_grokking_vs_baseline", "plot_llc_vs_loss",
    "plot_pairs", "plot_steps_by_arch",
    "plot_llc_comparison", "plot_llc_vs_accuracy", "plot_training_curves",
    "plot_seq_capacity", "plot_seq_llc_vs_params", "plot_seq_trajectories",
]
