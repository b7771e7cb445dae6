r"""``torchgeo-mmearth probe``: frozen-feature k-NN and linear probes from the shell.

The datamodule is given as in TorchGeo's CLI (jsonargparse): ``--data
CLASS_NAME_OR_PATH`` with ``--data.init_args.NAME VALUE`` and
``--data.dict_kwargs.NAME VALUE``, or a YAML ``--config`` with a ``data:``
section (and any other option as a top-level key)::

    torchgeo-mmearth probe --model mmearth_convnextv2_atto \
        --weights MMEarthWeights.S2_MP_MAE --config eurosat.yaml \
        --fractions 0.01x_train 0.05x_train 0.50x_train --out results/eurosat

It writes ``probe.{csv,md,png}`` (and ``label_efficiency.{csv,md,png}`` with
``--fractions``) to ``--out`` and prints the Markdown tables.
"""

import importlib
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace  # type: ignore[attr-defined]
from lightning.pytorch import LightningDataModule

from .._errors import USER_ERRORS, report_error
from .._interrupt import command_line, report_interrupted
from .features import ExtractedFeatures, extract_features, load_backbone
from .label_efficiency import (
    LabelEfficiencyResult,
    label_efficiency,
    partition_label_efficiency,
)
from .metrics import TASKS
from .probes import KNN_TEMPERATURE, METHODS, WEIGHT_DECAYS, evaluate_probes
from .report import (
    format_markdown,
    plot_label_efficiency,
    plot_probe_results,
    write_table,
)

__all__ = ['build_parser', 'main']


def build_parser(short_names: bool = True) -> ArgumentParser:
    """The argument parser of ``probe``.

    Args:
        short_names: import TorchGeo's and the plugin's datamodules (seconds), so
            that ``--data`` takes their class names; the help text needs none.

    Returns:
        The parser.
    """
    if short_names:
        # Short class names (--data EuroSATDataModule) resolve for imported classes.
        import torchgeo.datamodules  # noqa: F401

        from .. import datamodules  # noqa: F401

    parser = ArgumentParser(
        prog='torchgeo-mmearth probe',
        description='Extract frozen features of a timm backbone once on a TorchGeo '
        'classification datamodule, then fit k-NN and linear probes in seconds; '
        'test metrics with bootstrap confidence intervals, as tables and plots.',
        env_prefix='TORCHGEO_MMEARTH_PROBE',
    )
    parser.add_argument('--config', action=ActionConfigFile, help='YAML config file')
    parser.add_subclass_arguments(
        LightningDataModule,
        'data',
        required=True,
        help='the classification datamodule (batches with image and label)',
    )
    parser.add_argument(
        '--model',
        type=str,
        default='mmearth_convnextv2_atto',
        help='timm model name (built without classifier)',
    )
    parser.add_argument(
        '--weights',
        type=str | None,
        default=None,
        help="weights: an enum name ('MMEarthWeights.S2_MP_MAE') or a checkpoint file",
    )
    parser.add_argument(
        '--in_channels',
        type=int | None,
        default=None,
        help="input bands (default: the weights' in_chans, else timm's default)",
    )
    parser.add_argument(
        '--task',
        type=str | None,
        default=None,
        help=f"one of {TASKS} (default: the datamodule's task_type, else from the "
        'label shape)',
    )
    parser.add_argument(
        '--num_classes',
        type=int | None,
        default=None,
        help="classes or labels (default: the datamodule's num_classes or "
        'num_labels, else from the labels)',
    )
    parser.add_argument(
        '--methods', type=str, nargs='+', default=list(METHODS), help='probes to run'
    )
    parser.add_argument(
        '--k',
        type=int,
        nargs='+',
        default=[20],
        help='k-NN neighbours (several: chosen on the validation split)',
    )
    parser.add_argument(
        '--temperature', type=float, default=KNN_TEMPERATURE, help='k-NN temperature'
    )
    parser.add_argument(
        '--weight_decays',
        type=float,
        nargs='+',
        default=list(WEIGHT_DECAYS),
        help='linear-probe L2 penalties, chosen on the validation split',
    )
    parser.add_argument(
        '--bootstrap',
        type=int,
        default=1000,
        help='bootstrap resamples of the test metric (0: no interval)',
    )
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help='seed of the initial parameters (those the weights do not set), '
        'subsampling and bootstrap',
    )
    parser.add_argument(
        '--fractions',
        type=str,
        nargs='+',
        default=None,
        help='label efficiency: training fractions in (0, 1] (stratified subsets '
        "of the train features) or partition names ('0.01x_train' ...: the "
        "datamodule's partition argument)",
    )
    parser.add_argument(
        '--out', type=Path, default=Path('probe-output'), help='output folder'
    )
    parser.add_argument(
        '--cache',
        type=Path | None,
        default=None,
        help='features .pt file: reused when it matches, written otherwise',
    )
    parser.add_argument(
        '--device', type=str | None, default=None, help='default: cuda if available'
    )
    parser.add_argument('--bf16', type=bool, default=False, help='bfloat16 autocast')
    parser.add_argument(
        '--train_aug',
        type=bool,
        default=False,
        help='pass train batches through the training augmentations',
    )
    parser.add_argument(
        '--progress', type=bool, default=True, help='show progress bars'
    )
    return parser


def _infer_task(
    features: ExtractedFeatures,
    datamodule: LightningDataModule,
    task: str | None,
    num_classes: int | None,
) -> tuple[str, int]:
    labels = features['train'].labels
    if task is None:
        # GeoBenchDataModule says it (task_type); otherwise the label shape.
        declared = getattr(datamodule, 'task_type', None)
        if declared in TASKS:
            task = declared
        else:
            task = 'multiclass' if labels.ndim == 1 else 'multilabel'
    if num_classes is None:
        for name in ('num_classes', 'num_labels'):
            value = getattr(datamodule, name, None)
            if isinstance(value, int) and value > 0:
                num_classes = value
                break
    if num_classes is None:
        if task == 'multilabel':
            num_classes = labels.shape[1]
        else:
            num_classes = 1 + max(
                int(split.labels.max()) for split in features.splits.values()
            )
    return task, num_classes


def _partition_factory(
    parser: ArgumentParser, cfg: Namespace
) -> Callable[[str | None], LightningDataModule]:
    data = cfg.data
    module, _, name = data.class_path.rpartition('.')
    parameters = inspect.signature(getattr(importlib.import_module(module), name))
    if 'partition' in parameters.parameters:
        where = 'init_args'
    elif any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.parameters.values()
    ):
        where = 'dict_kwargs'  # forwarded to the dataset, as TorchGeo's do
    else:
        raise ValueError(
            f'--fractions names partitions, but {data.class_path} has no partition '
            'argument; give fractions in (0, 1] instead'
        )

    def factory(partition: str | None) -> LightningDataModule:
        if partition is None:
            return cast(LightningDataModule, parser.instantiate(cfg).data)
        copy = cfg.clone()
        if where == 'init_args':
            copy.data.init_args.partition = partition
        else:
            copy.data.dict_kwargs = {
                **(copy.data.get('dict_kwargs') or {}),
                'partition': partition,
            }
        return cast(LightningDataModule, parser.instantiate(copy).data)

    return factory


def _fractions(values: Sequence[str]) -> list[float] | None:
    """Fractions as floats, or None when the values are partition names."""
    try:
        fractions = [float(value) for value in values]
    except ValueError:
        return None
    bad = [f for f in fractions if not 0 < f <= 1 or math.isnan(f)]
    if bad:
        raise ValueError(f'--fractions must be in (0, 1], got {bad}')
    return fractions


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchgeo-mmearth probe``.

    Args:
        argv: command-line arguments (default: ``sys.argv[2:]``).

    Returns:
        The exit status.
    """
    arguments = list(sys.argv[2:] if argv is None else argv)
    # Plain --help resolves no class name: it need not import every datamodule.
    help_only = bool({'-h', '--help'} & set(arguments)) and not any(
        argument.startswith(('--data', '--config')) for argument in arguments
    )
    parser = build_parser(short_names=not help_only)
    cfg = parser.parse_args(arguments)
    try:
        return _probe(parser, cfg)
    except USER_ERRORS as error:
        return report_error(error)
    except KeyboardInterrupt:
        cache: Path | None = cfg.cache
        if cache is not None and cache.exists():
            kept = f'the extracted features are kept in {cache}'
        else:
            kept = 'no features were kept (--cache FILE keeps them for the next run)'
        return report_interrupted(kept, 'To resume', command_line('probe', arguments))


def _probe(parser: ArgumentParser, cfg: Namespace) -> int:
    unknown = [method for method in cfg.methods if method not in METHODS]
    if unknown:
        parser.error(f'--methods must be among {METHODS}, got {unknown}')
    if cfg.task is not None and cfg.task not in TASKS:
        parser.error(f'--task must be one of {TASKS}, got {cfg.task!r}')
    fractions = _fractions(cfg.fractions) if cfg.fractions else None
    factory = (
        _partition_factory(parser, cfg) if cfg.fractions and fractions is None else None
    )
    datamodule = parser.instantiate(cfg).data
    torch.manual_seed(cfg.seed)  # parameters the weights do not set
    backbone = load_backbone(cfg.model, cfg.weights, cfg.in_channels)
    out: Path = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    extract = {
        'bf16': cfg.bf16,
        'train_aug': cfg.train_aug,
        'progress': cfg.progress,
        'description': {
            'model': cfg.model,
            'weights': cfg.weights,
            'in_channels': cfg.in_channels,
        },
    }
    features = extract_features(
        backbone, datamodule, device=cfg.device, cache=cfg.cache, **extract
    )
    task, num_classes = _infer_task(features, datamodule, cfg.task, cfg.num_classes)
    options: dict[str, Any] = {
        'methods': cfg.methods,
        'k': cfg.k,
        'weight_decays': cfg.weight_decays,
        'bootstrap': cfg.bootstrap,
        'seed': cfg.seed,
        'device': cfg.device,
        'temperature': cfg.temperature,
    }
    results = evaluate_probes(features, task, num_classes, **options)
    rows = [result.as_row() for result in results]
    write_table(rows, out / 'probe')
    title = f'{cfg.model} on {type(datamodule).__name__}'
    plot_probe_results(rows, out / 'probe.png', title=title)
    print(f'# {title}: {task}, {num_classes} classes\n')
    print(format_markdown(rows))

    if cfg.fractions:
        efficiency: list[LabelEfficiencyResult]
        if fractions is not None:
            efficiency = label_efficiency(
                features, fractions, task, num_classes, **options
            )
        else:
            assert factory is not None
            efficiency, _ = partition_label_efficiency(
                backbone,
                factory,
                cfg.fractions,
                task,
                num_classes,
                features=features,
                **options,
                **extract,
            )
        efficiency_rows = [result.as_row() for result in efficiency]
        write_table(efficiency_rows, out / 'label_efficiency')
        plot_label_efficiency(
            efficiency_rows, out / 'label_efficiency.png', title=title
        )
        print('# Label efficiency\n')
        print(format_markdown(efficiency_rows))
    print(f'tables and figures written to {out}')
    return 0
