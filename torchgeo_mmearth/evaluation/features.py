"""Frozen features of a backbone on a TorchGeo classification datamodule.

The features are extracted once, in evaluation mode and without gradients, and
then probed many times (:mod:`torchgeo_mmearth.evaluation.probes`). What a
feature is: the backbone's pooled pre-logits output, i.e. for a timm model
``model.forward_head(model.forward_features(x), pre_logits=True)``, exactly the
input of the classifier that TorchGeo's ``ClassificationTask`` trains when
``freeze_backbone=True``. For the MMEarth ConvNeXt V2
(:class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2`) that is global average
pooling followed by the final LayerNorm, which the pretraining checkpoints do not
contain and which therefore stays at weight 1, bias 0: MMEarth's linear-probe
feature, GAP -> non-affine LayerNorm (Nedungadi et al., ECCV 2024,
https://arxiv.org/abs/2405.02771, and its code's ``--linear_probe``).

Batches are prepared as Lightning prepares them for a model: the datamodule's
``on_before_batch_transfer``, ``transfer_batch_to_device`` and
``on_after_batch_transfer`` hooks run with a trainer in the matching stage, so
TorchGeo datamodules apply their ``val_aug``/``test_aug`` (or ``aug``)
normalisation on the device, as in ``trainer.validate``/``trainer.test``.
"""

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from torchvision.models._api import WeightsEnum
from tqdm.auto import tqdm  # type: ignore[import-untyped]

from .._atomic import atomic_path
from ..models import weights_state_dict

__all__ = [
    'SAMPLE_ID_ATTRIBUTES',
    'SPLITS',
    'ExtractedFeatures',
    'SplitFeatures',
    'dataset_sample_ids',
    'extract_features',
    'load_backbone',
    'pooled_features',
    'resolve_device',
]

#: The splits of a classification datamodule, in extraction order.
SPLITS = ('train', 'val', 'test')

_STAGES = {
    'train': (TrainerFn.FITTING, RunningStage.TRAINING),
    'val': (TrainerFn.VALIDATING, RunningStage.VALIDATING),
    'test': (TrainerFn.TESTING, RunningStage.TESTING),
}
_SETUP_STAGE = {'train': 'fit', 'val': 'fit', 'test': 'test'}

#: Dataset attributes that name the samples, one per index (TorchGeo-style
#: datasets of this plugin: GeoBench's ``sample_names``).
SAMPLE_ID_ATTRIBUTES = ('sample_ids', 'sample_names')


@dataclass(frozen=True)
class SplitFeatures:
    """Features and labels of one split, one row per sample in dataset order.

    Attributes:
        features: (N, D) float32 features on the CPU.
        labels: (N,) int64 class indices, or (N, L) multi-hot labels.
        ids: one identifier per sample (from the batches' ``id`` entry or the
            dataset's ``sample_ids`` or ``sample_names``), or None when the data
            has none.
    """

    features: Tensor
    labels: Tensor
    ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Check that the rows agree.

        Raises:
            ValueError: if features, labels and ids differ in length or the
                features are not a matrix.
        """
        if self.features.ndim != 2:
            raise ValueError(
                f'features must be (N, D), got shape {tuple(self.features.shape)}'
            )
        n = len(self.features)
        if len(self.labels) != n or (self.ids is not None and len(self.ids) != n):
            raise ValueError(
                f'{n} feature rows but {len(self.labels)} labels'
                + ('' if self.ids is None else f' and {len(self.ids)} ids')
            )

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.features)

    def select(self, index: Tensor | Sequence[int]) -> 'SplitFeatures':
        """The rows at *index*, in that order.

        Args:
            index: row indices.

        Returns:
            A new :class:`SplitFeatures`.
        """
        index = torch.as_tensor(index, dtype=torch.long)
        ids = None if self.ids is None else tuple(self.ids[i] for i in index.tolist())
        return SplitFeatures(self.features[index], self.labels[index], ids)

    def select_ids(self, ids: Sequence[str]) -> 'SplitFeatures':
        """The rows of the samples named *ids*, in that order.

        Args:
            ids: sample identifiers.

        Returns:
            A new :class:`SplitFeatures`.

        Raises:
            ValueError: if these features have no ids or lack some of *ids*.
        """
        if self.ids is None:
            raise ValueError('these features have no sample ids to select by')
        row = {sample: i for i, sample in enumerate(self.ids)}
        missing = [sample for sample in ids if sample not in row]
        if missing:
            raise ValueError(
                f'{len(missing)} of {len(ids)} sample ids are not among the '
                f'{len(self.ids)} extracted samples, e.g. {missing[:3]}'
            )
        return self.select([row[sample] for sample in ids])


@dataclass
class ExtractedFeatures:
    """The features of every extracted split, with what produced them.

    Attributes:
        splits: ``{'train' | 'val' | 'test': SplitFeatures}``.
        meta: description of the backbone, weights, datamodule and options
            (checked when a cache file is reused).
    """

    splits: dict[str, SplitFeatures]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> SplitFeatures:
        """The features of one split.

        Args:
            split: 'train', 'val' or 'test'.

        Returns:
            Its :class:`SplitFeatures`.

        Raises:
            KeyError: if the split was not extracted.
        """
        if split not in self.splits:
            raise KeyError(
                f'no {split!r} features; extracted splits: {list(self.splits)}'
            )
        return self.splits[split]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the features to a ``.pt`` file (a temporary file, then renamed).

        Args:
            path: the file to write.

        Returns:
            The written file.
        """
        path = Path(path)
        data = {
            'meta': self.meta,
            'splits': {
                name: {
                    'features': split.features,
                    'labels': split.labels,
                    'ids': None if split.ids is None else list(split.ids),
                }
                for name, split in self.splits.items()
            },
        }
        with atomic_path(path) as temporary:
            torch.save(data, temporary)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> 'ExtractedFeatures':
        """Read features written by :meth:`save`.

        Args:
            path: a file written by :meth:`save`.

        Returns:
            The features.

        Raises:
            ValueError: if the file is not a features file.
        """
        data = torch.load(path, map_location='cpu', weights_only=True)
        if not isinstance(data, dict) or not {'meta', 'splits'} <= data.keys():
            raise ValueError(
                f'{path} is not a features file written by ExtractedFeatures.save '
                "(needs 'meta' and 'splits')"
            )
        splits = {
            name: SplitFeatures(
                split['features'],
                split['labels'],
                None if split['ids'] is None else tuple(split['ids']),
            )
            for name, split in data['splits'].items()
        }
        return cls(splits, dict(data['meta']))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on.

    Args:
        device: a device, or None for CUDA when available and else the CPU.

    Returns:
        The device.
    """
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def _describe(weights: Any) -> str | None:
    if weights is None:
        return None
    return repr(weights) if isinstance(weights, WeightsEnum) else str(weights)


def _load_weights(backbone: nn.Module, weights: Any) -> None:
    """Load *weights* into *backbone* as ClassificationTask.configure_models does."""
    state_dict = weights_state_dict(weights, backbone)
    source = _describe(weights)
    own = backbone.state_dict()
    # The backbone has no classifier: drop the weights' classifier.
    cfg = getattr(backbone, 'pretrained_cfg', None) or {}
    classifier = cfg.get('classifier')
    for key in list(state_dict):
        if key not in own and classifier and key.startswith(f'{classifier}.'):
            del state_dict[key]
    unexpected = sorted(set(state_dict) - set(own))
    if len(unexpected) == len(state_dict):
        raise ValueError(
            f'none of the weights {source} match the backbone '
            f'({type(backbone).__name__}), e.g. {unexpected[:3]}'
        )
    if unexpected:
        raise ValueError(
            f'the weights {source} have {len(unexpected)} entries that the backbone '
            f'({type(backbone).__name__}) lacks, e.g. {unexpected[:5]}: they are '
            'for another architecture'
        )
    from .._compat import load_state_dict as torchgeo_load_state_dict

    try:
        # TorchGeo's loader: re-initialises the first convolution (with a
        # warning) when the number of input bands differs.
        torchgeo_load_state_dict(backbone, state_dict)
    except (AttributeError, KeyError):
        # It reads .out_features of the last child, which timm heads that are
        # not a Linear (ConvNeXt's NormMlpClassifierHead) lack, and needs the
        # first convolution in the weights.
        backbone.load_state_dict(state_dict, strict=False)


def load_backbone(
    model: str | nn.Module,
    weights: WeightsEnum | str | os.PathLike[str] | None = None,
    in_channels: int | None = None,
) -> nn.Module:
    """Build a backbone without classifier and load pretrained weights into it.

    Weights are resolved and loaded as in TorchGeo's
    ``ClassificationTask.configure_models`` (a ``WeightsEnum`` member, the name of
    one such as ``'MMEarthWeights.S2_MP_MAE'``, or a checkpoint file), so that
    the features are those a Lightning linear probe on the same weights sees.
    Files may also be official MP-MAE checkpoints, ``torchgeo-mmearth
    export-weights`` outputs and timm state dicts. A classifier in the weights is
    ignored; any other entry the backbone lacks is an error.

    Args:
        model: a timm model name (built with ``num_classes=0``), or a module.
        weights: pretrained weights, or None to keep the module's parameters.
        in_channels: input bands of a model built from a name (default: the
            weights' ``meta['in_chans']``, else timm's default).

    Returns:
        The backbone, in evaluation mode.

    Raises:
        ValueError: if the weights do not fit the backbone.
    """
    if isinstance(model, nn.Module):
        backbone = model
    else:
        kwargs: dict[str, Any] = {'num_classes': 0}
        if in_channels is None and isinstance(weights, WeightsEnum):
            in_channels = weights.meta.get('in_chans')
        if in_channels is not None:
            kwargs['in_chans'] = in_channels
        backbone = timm.create_model(model, **kwargs)
    if weights is not None:
        _load_weights(backbone, weights)
    return backbone.eval()


def pooled_features(backbone: nn.Module, images: Tensor) -> Tensor:
    """The pooled pre-logits features of a batch.

    Args:
        backbone: a timm model (``forward_features`` and ``forward_head``), or a
            module whose output is (B, D) features.
        images: (B, C, H, W) input.

    Returns:
        (B, D) features.

    Raises:
        ValueError: if the backbone does not give one vector per sample.
    """
    forward_features = getattr(backbone, 'forward_features', None)
    forward_head = getattr(backbone, 'forward_head', None)
    if callable(forward_features) and callable(forward_head):
        out = forward_head(forward_features(images), pre_logits=True)
    else:
        out = backbone(images)
    if not isinstance(out, Tensor) or out.ndim != 2 or len(out) != len(images):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f'the backbone gives {shape} for {len(images)} images; features must be '
            '(B, D): use a timm model (pooled pre-logits) or a module that pools'
        )
    return out


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence the Trainer's start-up messages (accelerator, tips)."""
    logger = logging.getLogger('lightning.pytorch')
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _trainer(device: torch.device) -> Trainer:
    accelerator = 'gpu' if device.type == 'cuda' else device.type
    devices: Any = [device.index or 0] if device.type == 'cuda' else 1
    with _quiet_lightning():
        return Trainer(
            accelerator=accelerator,
            devices=devices,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )


@contextlib.contextmanager
def _attached(
    datamodule: LightningDataModule, trainer: Trainer, split: str
) -> Iterator[None]:
    """Attach *trainer* to *datamodule* in the stage Lightning uses for *split*."""
    trainer.state.fn, trainer.state.stage = _STAGES[split]
    previous = datamodule.trainer
    datamodule.trainer = trainer
    try:
        yield
    finally:
        datamodule.trainer = previous


def _ordered(loader: DataLoader[Any]) -> DataLoader[Any]:
    """The same loader in dataset order, keeping the last incomplete batch."""
    if loader.batch_size is None or isinstance(loader.dataset, IterableDataset):
        return loader  # a custom batch sampler or a stream: used as it is
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=False,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=False,
    )


def dataset_sample_ids(dataset: Any) -> list[str] | None:
    """The sample names of a map-style dataset, in index order, if it has them.

    Args:
        dataset: a dataset, e.g. a datamodule's ``train_dataset``.

    Returns:
        The ``sample_ids`` or ``sample_names`` attribute as strings, or None.
    """
    if dataset is None or isinstance(dataset, IterableDataset):
        return None
    for name in SAMPLE_ID_ATTRIBUTES:
        ids = getattr(dataset, name, None)
        if ids is not None:
            return [str(sample) for sample in ids]
    return None


def _batch_ids(value: Any) -> list[str]:
    if isinstance(value, Tensor):
        return [str(v) for v in value.tolist()]
    return [str(v) for v in value]


def _datamodule_description(datamodule: LightningDataModule) -> dict[str, Any]:
    cls = type(datamodule)
    arguments: dict[str, Any] = {}
    hparams = getattr(datamodule, 'hparams', None)
    if hparams:
        arguments.update(dict(hparams))
    for name in ('batch_size', 'kwargs'):
        if hasattr(datamodule, name):
            arguments[name] = getattr(datamodule, name)
    return {
        'class': f'{cls.__module__}.{cls.__qualname__}',
        'arguments': repr(arguments),
    }


def _extract_split(
    backbone: nn.Module,
    datamodule: LightningDataModule,
    trainer: Trainer,
    split: str,
    hook_split: str,
    device: torch.device,
    bf16: bool,
    progress: bool,
    keys: tuple[str, str, str],
) -> SplitFeatures:
    image_key, label_key, id_key = keys
    original = getattr(datamodule, f'{split}_dataloader')()
    loader = _ordered(original)
    features: list[Tensor] = []
    labels: list[Tensor] = []
    ids: list[str] | None = []
    with (
        _attached(datamodule, trainer, hook_split),
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
    ):
        bar = tqdm(loader, desc=f'{split} features', unit='batch', disable=not progress)
        for batch in bar:
            batch = datamodule.on_before_batch_transfer(batch, 0)
            batch = datamodule.transfer_batch_to_device(batch, device, 0)
            batch = datamodule.on_after_batch_transfer(batch, 0)
            for key in (image_key, label_key):
                if key not in batch:
                    raise KeyError(
                        f'{type(datamodule).__name__}.{split}_dataloader() gives '
                        f'batches without {key!r} (keys: {sorted(batch)}); '
                        'a classification datamodule is needed'
                    )
            features.append(pooled_features(backbone, batch[image_key]).float().cpu())
            labels.append(torch.as_tensor(batch[label_key]).cpu())
            if ids is not None and id_key in batch:
                ids.extend(_batch_ids(batch[id_key]))
            else:
                ids = None
    if not features:
        raise ValueError(f'the {split} split of {type(datamodule).__name__} is empty')
    if ids is None and loader is not original:
        # Rows in dataset index order: the dataset's names apply.
        ids = dataset_sample_ids(loader.dataset)
    label = torch.cat(labels)
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    return SplitFeatures(
        torch.cat(features), label.long(), None if ids is None else tuple(ids)
    )


def extract_features(
    backbone: nn.Module,
    datamodule: LightningDataModule,
    splits: Sequence[str] = SPLITS,
    *,
    device: str | torch.device | None = None,
    bf16: bool = False,
    train_aug: bool = False,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    image_key: str = 'image',
    label_key: str = 'label',
    id_key: str = 'id',
    description: Mapping[str, Any] | None = None,
) -> ExtractedFeatures:
    """Extract the frozen features of every sample of some splits, once.

    The backbone runs in evaluation mode under ``torch.inference_mode`` (and
    bfloat16 autocast with *bf16*). Each split's dataloader is read in dataset
    order with its last incomplete batch (the train loader is rebuilt without
    shuffling or ``drop_last``), and each batch passes the datamodule's
    batch hooks as in Lightning (see the module docstring). Train batches get
    the evaluation transforms (those of ``trainer.validate``) unless
    *train_aug*, which applies one draw of the training augmentations instead.

    Args:
        backbone: the frozen model (see :func:`load_backbone`); it is moved to
            *device* and put in evaluation mode.
        datamodule: a classification datamodule whose batches hold
            ``image_key`` and ``label_key`` (e.g. any TorchGeo
            ``NonGeoDataModule`` for classification).
        splits: the splits to extract, among 'train', 'val' and 'test'.
        device: where to run the backbone (default: CUDA when available).
        bf16: run the backbone under bfloat16 autocast.
        train_aug: pass train batches through the training stage's transforms.
        cache: a ``.pt`` file: read the features from it when it was written
            for the same backbone, weights, datamodule and options, else
            extract and write them there.
        progress: show a progress bar per split.
        image_key: batch entry of the images.
        label_key: batch entry of the labels.
        id_key: batch entry of sample identifiers, if any (the dataset's
            ``sample_ids`` or ``sample_names`` attribute is used otherwise).
        description: what else identifies the backbone and weights in the
            cache's metadata (model and weights names, ...), besides the
            backbone's class, parameter count and a checksum of its parameters.

    Returns:
        The features of each split.

    Raises:
        ValueError: for an unknown split, an empty split, or a cache file
            written for something else.
        KeyError: if the batches lack the image or label entry.
    """
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ValueError(f'splits must be among {SPLITS}, got {list(splits)}')
    device = resolve_device(device)
    parameters = [p.detach() for p in backbone.parameters()]
    meta: dict[str, Any] = {
        'backbone': {
            'class': type(backbone).__name__,
            'parameters': sum(p.numel() for p in parameters),
            # Tells other weights apart (for the cache) at the cost of one pass.
            'checksum': _checksum(parameters),
            **(description or {}),
        },
        'datamodule': _datamodule_description(datamodule),
        'splits': list(splits),
        'train_aug': train_aug,
        'bf16': bf16,
        'keys': [image_key, label_key, id_key],
    }
    if cache is not None and os.path.exists(cache):
        cached = ExtractedFeatures.load(cache)
        if cached.meta != meta:
            raise ValueError(
                f'the features cache {cache} was written for {cached.meta}, not for '
                f'{meta}; delete it or choose another cache file'
            )
        return cached

    backbone = backbone.to(device).eval()
    trainer = _trainer(device)
    stages = {_SETUP_STAGE[split] for split in splits}
    datamodule.prepare_data()
    for stage in sorted(stages):
        datamodule.setup(stage)
    result: dict[str, SplitFeatures] = {}
    for split in splits:
        hook_split = 'val' if split == 'train' and not train_aug else split
        result[split] = _extract_split(
            backbone,
            datamodule,
            trainer,
            split,
            hook_split,
            device,
            bf16,
            progress,
            (image_key, label_key, id_key),
        )
    features = ExtractedFeatures(result, meta)
    if cache is not None:
        features.save(cache)
    return features


def _checksum(parameters: Sequence[Tensor]) -> str:
    """A digest of the parameters' bytes.

    Exact, unlike a floating-point sum of the parameters, whose last digits change
    with the reduction order (threads, vector width) between processes: a resumed
    ``probe`` would refuse the features that it cached itself.
    """
    digest = hashlib.blake2b(digest_size=16)
    for parameter in parameters:
        flat = parameter.detach().cpu().contiguous().flatten()
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
