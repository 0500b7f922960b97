"""Pixel and component metrics of anomaly segmentation (docs/method.md section 5).

One implementation for training validation, ``flowclas eval`` and rosbag replay:
``exact_metrics``/``ExactMetrics`` (every pixel, equal to scikit-learn), ``BinnedMetrics``
(fixed thresholds, constant memory, mergeable across processes), ``ComponentMetrics``
(SegmentMeIfYouCan), plots and the ``metrics.json`` writer. Metric dicts hold fractions;
``as_percentages`` converts for reports.
"""

from flowclas_ros.metrics.binned import BinnedMetrics
from flowclas_ros.metrics.components import TRACKS, ComponentMetrics
from flowclas_ros.metrics.pixel import ExactMetrics, exact_metrics, split_pixels
from flowclas_ros.metrics.plots import plot_pr_curve, plot_roc_curve, plot_score_histogram
from flowclas_ros.metrics.report import as_percentages, write_metrics_json

__all__ = [
    "TRACKS",
    "BinnedMetrics",
    "ComponentMetrics",
    "ExactMetrics",
    "as_percentages",
    "exact_metrics",
    "plot_pr_curve",
    "plot_roc_curve",
    "plot_score_histogram",
    "split_pixels",
    "write_metrics_json",
]
