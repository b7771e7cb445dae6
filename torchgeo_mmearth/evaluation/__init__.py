"""Fast frozen-feature evaluation: k-NN and linear probes, label efficiency.

Extract a backbone's features once on any TorchGeo classification datamodule
(:func:`extract_features`), then fit a weighted k-NN and a linear probe on them
in seconds (:func:`evaluate_probes`), with bootstrap confidence intervals of the
test metric, MMEarth's GEO-Bench metrics (Nedungadi et al., ECCV 2024,
https://arxiv.org/abs/2405.02771; Lacoste et al., NeurIPS 2023,
https://arxiv.org/abs/2306.03831), tables and figures (:func:`write_table`,
:func:`plot_probe_results`), and the label-efficiency curve
(:func:`label_efficiency`, :func:`partition_label_efficiency`). The command
``torchgeo-mmearth probe`` runs all of it. See ``docs/evaluation.md``.
"""

from .features import (
    SPLITS,
    ExtractedFeatures,
    SplitFeatures,
    dataset_sample_ids,
    extract_features,
    load_backbone,
    pooled_features,
    resolve_device,
)
from .label_efficiency import (
    LabelEfficiencyResult,
    label_efficiency,
    partition_label_efficiency,
    stratified_subset,
)
from .metrics import (
    METRIC_NAMES,
    TASKS,
    bootstrap_ci,
    check_task,
    compute_metric,
    make_metric,
)
from .probes import (
    KNN_TEMPERATURE,
    METHODS,
    SATURATED,
    WEIGHT_DECAYS,
    LinearProbe,
    ProbeResult,
    evaluate_knn,
    evaluate_linear,
    evaluate_probes,
    fit_linear_probe,
    knn_scores,
    select_linear_probe,
)
from .report import (
    format_markdown,
    plot_label_efficiency,
    plot_probe_results,
    write_table,
)

__all__ = (
    'KNN_TEMPERATURE',
    'METHODS',
    'METRIC_NAMES',
    'SATURATED',
    'SPLITS',
    'TASKS',
    'WEIGHT_DECAYS',
    'ExtractedFeatures',
    'LabelEfficiencyResult',
    'LinearProbe',
    'ProbeResult',
    'SplitFeatures',
    'bootstrap_ci',
    'check_task',
    'compute_metric',
    'dataset_sample_ids',
    'evaluate_knn',
    'evaluate_linear',
    'evaluate_probes',
    'extract_features',
    'fit_linear_probe',
    'format_markdown',
    'knn_scores',
    'label_efficiency',
    'load_backbone',
    'make_metric',
    'partition_label_efficiency',
    'plot_label_efficiency',
    'plot_probe_results',
    'pooled_features',
    'resolve_device',
    'select_linear_probe',
    'stratified_subset',
    'write_table',
)
