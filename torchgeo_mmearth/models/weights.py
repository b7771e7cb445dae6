"""Pretrained MP-MAE weights for TorchGeo: :class:`MMEarthWeights`.

:class:`MMEarthWeights` is a TorchGeo/torchvision ``WeightsEnum`` with one member
per checkpoint published with MMEarth (Nedungadi et al., "MMEarth: Exploring
Multi-Modal Pretext Tasks For Geospatial Representation Learning", ECCV 2024,
https://arxiv.org/abs/2405.02771), usable wherever TorchGeo takes weights::

    from torchgeo.tasks import Classification  # 0.8: trainers.ClassificationTask
    from torchgeo_mmearth.models import MMEarthWeights

    weights = MMEarthWeights.S2_MP_MAE
    task = Classification(
        model=weights.meta['model'], weights=weights, in_channels=12, num_classes=10
    )

The models expect their bands in the order they were pretrained on
(``meta['bands']``): Sentinel-2 B1-B7, **B8A, B8**, B9, B11, B12, or B2, B3, B4
(BGR) for the RGB models. ``weights.transforms_for(bands)`` chains the
transforms that reorder and select the bands of other datasets
(:class:`~torchgeo_mmearth.transforms.BandRemap`) and z-score them with the MMEarth
statistics (:class:`~torchgeo_mmearth.transforms.MMEarthS2Normalize`).
"""

import os
import re
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeAlias, cast

import timm
import torch
from torch import Tensor, nn
from torchvision.models._api import Weights, WeightsEnum

from ..modalities import BandStats
from ..transforms import BandRemap, MMEarthS2Normalize
from .checkpoints import (
    OFFICIAL_CHECKPOINTS,
    CheckpointDownloadError,
    OfficialCheckpoint,
    load_checkpoint,
)
from .mmearth_convnextv2 import (
    MMEARTH_CONVNEXTV2_SIZES,
    MMEarthConvNeXtV2,
    checkpoint_filter_fn,
)

__all__ = [
    'WEIGHTS_DIR_VARIABLE',
    'MMEarthWeights',
    'convert_checkpoint',
    'mmearth_convnextv2_atto',
    'mmearth_convnextv2_atto_p16',
    'mmearth_convnextv2_tiny',
    'pretraining_checkpoint',
    'weights_state_dict',
]


def convert_checkpoint(
    checkpoint: Mapping[str, Any], model: str | nn.Module, in_chans: int | None = None
) -> dict[str, Tensor]:
    """Convert a checkpoint to the timm keys of an MMEarth ConvNeXt V2.

    Args:
        checkpoint: a checkpoint in any format of
            :func:`~torchgeo_mmearth.models.checkpoint_filter_fn` (official
            MP-MAE, ``torchgeo-mmearth export-weights``, Lightning, timm, smp).
        model: the model, or the name of a registered timm model (built on the
            meta device, so without allocating memory).
        in_chans: input bands of the model built from a name (default 12).

    Returns:
        The encoder state dict (no ``norm`` or ``head``, which pretraining does not
        train), ready for ``model.load_state_dict(..., strict=False)``.

    Raises:
        ValueError: if the checkpoint is not an encoder of that architecture,
            input bands and patch size.
    """
    if isinstance(model, str):
        with torch.device('meta'):
            model = timm.create_model(model, in_chans=in_chans or 12, num_classes=0)
    return checkpoint_filter_fn(checkpoint, model)


#: Environment variable naming a folder of local copies of the official
#: checkpoints, in their published layout (``<folder>/checkpoint-199.pth``), that
#: :meth:`MMEarthWeights.get_state_dict` reads before the cache and the network.
WEIGHTS_DIR_VARIABLE = 'TORCHGEO_MMEARTH_WEIGHTS'


def _cache_name(checkpoint: OfficialCheckpoint, url: str) -> str:
    """Cache file of a member: its folder plus the URL's file name."""
    return f'mmearth-{checkpoint.folder}-{os.path.basename(url.rstrip("/"))}'


_CHECKPOINTS = {checkpoint.name: checkpoint for checkpoint in OFFICIAL_CHECKPOINTS}


def _weights(name: str) -> Weights:
    checkpoint = _CHECKPOINTS[name]
    return Weights(
        url=checkpoint.url,
        transforms=MMEarthS2Normalize(checkpoint.bands, level='l2a'),
        meta={
            'dataset': checkpoint.dataset,
            'in_chans': checkpoint.in_chans,
            'model': checkpoint.model,
            'publication': 'https://arxiv.org/abs/2405.02771',
            'repo': 'https://github.com/vishalned/MMEarth-train',
            'ssl_method': checkpoint.ssl_method,
            'bands': list(checkpoint.bands),
            'patch_size': checkpoint.patch_size,
            'input_size': checkpoint.input_size,
            # Neither the checkpoints nor vishalned/MMEarth-train state a licence
            # (the MMEarth data is CC-BY-4.0, MMEarth-data's code MIT).
            'license': 'unspecified',
            'outputs': checkpoint.outputs,
            'loss_weighting': checkpoint.loss,
            'checkpoint': checkpoint.folder,
            'timm_name': f'{checkpoint.model}.{checkpoint.tag}',
        },
    )


class MMEarthWeights(WeightsEnum):  # type: ignore[misc]
    """The official MP-MAE pretraining checkpoints of MMEarth.

    One member per checkpoint of the README of vishalned/MMEarth-train, all
    ConvNeXt V2 encoders with the MMEarth stem
    (:class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2`), pretrained 200 epochs
    with 60 % masking:

    ========================= =============================================== =============================== ===== ============= =========== =========================== ===========
    member                    checkpoint folder                               ``meta['model']``               bands input / patch corpus      pretext targets             loss
    ========================= =============================================== =============================== ===== ============= =========== =========================== ===========
    ``S2_MP_MAE``             ``pt-all_mod_atto_1M_64_uncertainty_56-8``      ``mmearth_convnextv2_atto``     12 S2 56 / 8        MMEarth64   all modalities              uncertainty
    ``S2_MP_MAE_UNWEIGHTED``  ``pt-all_mod_atto_1M_64_unweighted_56-8``       ``mmearth_convnextv2_atto``     12 S2 56 / 8        MMEarth64   all modalities              unweighted
    ``S2_MP_MAE_MMEARTH``     ``pt-all_mod_atto_1M_128_uncertainty_112-16``   ``mmearth_convnextv2_atto_p16`` 12 S2 112 / 16      MMEarth     all modalities              uncertainty
    ``S2_MP_MAE_MMEARTH100K`` ``pt-all_mod_atto_100k_128_uncertainty_112-16`` ``mmearth_convnextv2_atto_p16`` 12 S2 112 / 16      MMEarth100k all modalities              uncertainty
    ``S2_MP_MAE_TINY``        ``pt-all_mod_tiny_1M_64_uncertainty_56-8``      ``mmearth_convnextv2_tiny``     12 S2 56 / 8        MMEarth64   all modalities              uncertainty
    ``S2_MP_MAE_IMAGE_LEVEL`` ``pt-img_mod_atto_1M_64_uncertainty_56-8``      ``mmearth_convnextv2_atto``     12 S2 56 / 8        MMEarth64   image-level modalities      uncertainty
    ``S2_MP_MAE_PIXEL_LEVEL`` ``pt-pix_mod_atto_1M_64_uncertainty_56-8``      ``mmearth_convnextv2_atto``     12 S2 56 / 8        MMEarth64   pixel-level modalities      uncertainty
    ``S2_MAE``                ``pt-S2_atto_1M_64_uncertainty_56-8``           ``mmearth_convnextv2_atto``     12 S2 56 / 8        MMEarth64   Sentinel-2 (12 bands)       uncertainty
    ``RGB_MAE``               ``pt-rgb_atto_1M_64_uncertainty_56-8``          ``mmearth_convnextv2_atto``     BGR   56 / 8        MMEarth64   Sentinel-2 B2, B3, B4 (BGR) uncertainty
    ``RGB_MAE_MMEARTH``       ``pt-rgb_atto_1M_128_uncertainty_112-16``       ``mmearth_convnextv2_atto_p16`` BGR   112 / 16      MMEarth     Sentinel-2 B2, B3, B4 (BGR) uncertainty
    ========================= =============================================== =============================== ===== ============= =========== =========================== ===========

    MMEarth64 has 1.2 M tiles of 64 px (random 56 px crops), MMEarth 1.2 M tiles
    of 128 px and MMEarth100k 100 k tiles of 128 px (112 px crops). "12 S2" is
    Sentinel-2 B1-B7, B8A, B8, B9, B11, B12 in this order, "BGR" B2, B3, B4.
    ``S2_MP_MAE`` is the headline model of the paper. Whether the image- and
    pixel-level models also reconstruct Sentinel-2 is not documented.

    Each member's ``url`` is ``https://sid.erda.dk/share_redirect/g23YOnaaTp/
    <folder>/checkpoint-199.pth``; ``meta`` follows TorchGeo's schema
    (``dataset``, ``in_chans``, ``model``, ``publication``, ``repo``,
    ``ssl_method``, ``bands``) plus ``patch_size``, ``input_size``, ``license``
    (unspecified by the authors), ``outputs``, ``loss_weighting``, ``checkpoint``
    (the folder) and ``timm_name`` (the timm model and pretrained tag).
    ``transforms`` is :class:`MMEarthS2Normalize` for the member's bands (raw
    digital numbers in ``meta['bands']`` order, L2A statistics unless the
    sample's ``s2_type`` says L1C); :meth:`transforms_for` adds the band
    remapping of another dataset.

    :meth:`get_state_dict` downloads the checkpoint into the torch.hub cache,
    unpickles it without running code (:func:`~torchgeo_mmearth.models.
    load_checkpoint`) and returns the encoder in timm keys. The final ``norm``
    and the classifier are not part of pretraining: they keep their
    initialisation (LayerNorm weight 1, bias 0, as MMEarth's linear probes).

    Loading through TorchGeo:

    * ``ClassificationTask(model=w.meta['model'], weights=w, in_channels=12)``:
      TorchGeo warns and re-initialises the first convolution when
      ``in_channels`` differs from ``meta['in_chans']``, and a model of another
      patch size fails with a size mismatch of ``stem.3.weight``: use
      ``meta['model']``. ``freeze_backbone=True`` trains ``head`` only (linear
      probing; ``norm`` stays frozen at its identity initialisation).
    * ``SemanticSegmentationTask(model='unet', backbone=w.meta['model'],
      weights=w)``: the smp encoder converts and checks the weights (clear errors
      for other bands or patch sizes).
    * ``weights: MMEarthWeights.S2_MP_MAE`` in a ``torchgeo fit`` YAML config,
      once the plugin is imported (the ``torchgeo-mmearth`` command, or any
      ``class_path`` into ``torchgeo_mmearth``).
    * The builders check everything: ``mmearth_convnextv2_atto(weights=w)``.

    If you use these weights in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    S2_MP_MAE = _weights('S2_MP_MAE')
    S2_MP_MAE_UNWEIGHTED = _weights('S2_MP_MAE_UNWEIGHTED')
    S2_MP_MAE_MMEARTH = _weights('S2_MP_MAE_MMEARTH')
    S2_MP_MAE_MMEARTH100K = _weights('S2_MP_MAE_MMEARTH100K')
    S2_MP_MAE_TINY = _weights('S2_MP_MAE_TINY')
    S2_MP_MAE_IMAGE_LEVEL = _weights('S2_MP_MAE_IMAGE_LEVEL')
    S2_MP_MAE_PIXEL_LEVEL = _weights('S2_MP_MAE_PIXEL_LEVEL')
    S2_MAE = _weights('S2_MAE')
    RGB_MAE = _weights('RGB_MAE')
    RGB_MAE_MMEARTH = _weights('RGB_MAE_MMEARTH')

    def get_state_dict(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        map_location: str | torch.device | None = 'cpu',
        progress: bool = True,
        check_hash: bool = False,
        file_name: str | None = None,
        weights_only: bool = True,
    ) -> dict[str, Tensor]:
        """Find, or download once, and convert the checkpoint.

        The file is the first of:

        1. *model_dir*, when it is a file (a local copy of the published
           ``checkpoint-199.pth``, or an output of ``torchgeo-mmearth
           export-weights``) or a folder holding the published layout
           ``<meta['checkpoint']>/checkpoint-199.pth``;
        2. the same layout in the folder named by the environment variable
           ``TORCHGEO_MMEARTH_WEIGHTS`` (:data:`WEIGHTS_DIR_VARIABLE`), for
           TorchGeo's tasks and configs on machines without network;
        3. the cached download, ``<torch hub dir>/checkpoints/mmearth-<folder>-
           checkpoint-199.pth`` (or in *model_dir* when that is a cache folder):
           every official file is called ``checkpoint-199.pth``, so the cache
           name adds the folder;
        4. ``url``, downloaded into that cache.

        The other arguments are those of
        :func:`torch.hub.load_state_dict_from_url`, as TorchGeo passes them.

        Args:
            model_dir: a checkpoint file, a folder of the published files, or the
                cache folder instead of ``<torch hub dir>/checkpoints``.
            map_location: where to put the tensors.
            progress: show a progress bar while downloading.
            check_hash: check a download against a hash prefix in the URL's
                file name (the official names have none).
            file_name: name of the cached file.
            weights_only: what TorchGeo >= 0.9 passes (True). The file is always
                unpickled without running code (see
                :func:`~torchgeo_mmearth.models.load_checkpoint`); False is
                refused rather than silently ignored.

        Returns:
            The encoder state dict of ``meta['model']`` in timm keys.

        Raises:
            CheckpointDownloadError: if no local copy was found and the download
                failed; the message names the member, the URL, the reason and
                where a copy on disk is read from.
            ValueError: if the file is not this member's architecture, or
                *weights_only* is False.
            UnsafeCheckpointError: if the file pickles anything but plain data.
        """
        if not weights_only:
            raise ValueError(
                f'{self!r}: weights_only=False is not supported; MMEarth '
                'checkpoints are always loaded without running pickled code'
            )
        checkpoint_data = self.get_checkpoint(
            model_dir, map_location, progress, check_hash, file_name
        )
        try:
            return convert_checkpoint(
                checkpoint_data, self.meta['model'], self.meta['in_chans']
            )
        except ValueError as error:
            raise ValueError(f'{self!r} ({self._source(model_dir)}): {error}') from None

    def get_checkpoint(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        map_location: str | torch.device | None = 'cpu',
        progress: bool = True,
        check_hash: bool = False,
        file_name: str | None = None,
    ) -> Mapping[str, Any]:
        """Find, or download once, the whole official checkpoint, unconverted.

        The file is found as by :meth:`get_state_dict`; everything in it is
        returned (``model`` with encoder, decoder, heads and task weights,
        ``optimizer``, ``epoch``, ``args``), for
        :meth:`~torchgeo_mmearth.models.MPMAE.load_pretrained` to continue
        pretraining from.

        Args:
            model_dir: a checkpoint file, a folder of the published files, or the
                cache folder instead of ``<torch hub dir>/checkpoints``.
            map_location: where to put the tensors.
            progress: show a progress bar while downloading.
            check_hash: check a download against a hash prefix in the URL's
                file name.
            file_name: name of the cached file.

        Returns:
            The unpickled checkpoint.

        Raises:
            CheckpointDownloadError: if no local copy was found and the download
                failed; the message says where a copy on disk is read from.
            TypeError: if the file holds no dictionary.
            UnsafeCheckpointError: if the file pickles anything but plain data.
        """
        checkpoint = _CHECKPOINTS[self.name]
        map_location = map_location if map_location is not None else 'cpu'
        source = self._local_copy(model_dir)
        try:
            if source is not None:
                checkpoint_data = load_checkpoint(source, map_location=map_location)
            else:
                checkpoint_data = load_checkpoint(
                    self.url,
                    map_location=map_location,
                    progress=progress,
                    model_dir=model_dir,
                    file_name=file_name or _cache_name(checkpoint, self.url),
                    check_hash=check_hash,
                )
        except CheckpointDownloadError as error:
            raise CheckpointDownloadError(
                error.url, error.cached, self._offline_help(error)
            ) from None
        if not isinstance(checkpoint_data, Mapping):
            raise TypeError(
                f'{self!r}: {self._source(model_dir)} holds a '
                f'{type(checkpoint_data).__name__}, not a checkpoint dictionary'
            )
        return checkpoint_data

    def _source(self, model_dir: str | os.PathLike[str] | None) -> str:
        """The local file read for this member, or its URL."""
        return self._local_copy(model_dir) or self.url

    def _published_file(self, folder: str | os.PathLike[str]) -> str:
        """Where a folder of the published files holds this member's checkpoint."""
        name = os.path.basename(self.url.rstrip('/'))
        return os.path.join(folder, _CHECKPOINTS[self.name].folder, name)

    def _local_copy(self, model_dir: str | os.PathLike[str] | None) -> str | None:
        """The local file named by *model_dir* or the environment, if any."""
        if model_dir is not None and os.path.isfile(model_dir):
            return os.fspath(model_dir)
        folders = [model_dir] if model_dir is not None else []
        if os.environ.get(WEIGHTS_DIR_VARIABLE):
            folders.append(os.environ[WEIGHTS_DIR_VARIABLE])
        for folder in folders:
            path = self._published_file(folder)
            if os.path.isfile(path):
                return path
        return None

    def _offline_help(self, error: CheckpointDownloadError) -> str:
        """The reason of a failed download, and how to load a copy on disk."""
        published = f'{_CHECKPOINTS[self.name].folder}/{os.path.basename(error.url)}'
        where = (
            f'put it at {error.cached}, or set {WEIGHTS_DIR_VARIABLE} to a folder '
            f'holding {published}'
        )
        checked = ''
        if folder := os.environ.get(WEIGHTS_DIR_VARIABLE):
            checked = (
                f' {WEIGHTS_DIR_VARIABLE} is set to {folder}, but '
                f'{self._published_file(folder)} does not exist.'
            )
            where = f'put it there or at {error.cached}'
        return (
            f'{error.reason}.{checked} To load a copy of {published} from disk '
            f'instead, {where}, or pass its path: {self!r}.get_state_dict('
            "'/path/to/checkpoint-199.pth')"
        )

    def transforms_for(
        self,
        bands: Sequence[str],
        fill: Mapping[str, str] | None = None,
        level: str | None = 'l2a',
        band_stats: BandStats | str | os.PathLike[str] | None = None,
        scale: float = 1.0,
        key: str = 'image',
    ) -> nn.Sequential:
        """Transforms from a dataset's raw bands to this model's input.

        For example, TorchGeo's EuroSAT (13 bands, B8A last) or BigEarthNet
        (B8 before B8A)::

            dm = EuroSATDataModule(...)
            dm.aug = MMEarthWeights.S2_MP_MAE.transforms_for(EuroSAT.all_band_names)

        Args:
            bands: the dataset's band names, in channel order.
            fill: substitutes for bands the dataset lacks, e.g.
                :data:`SO2SAT_FILL`.
            level: processing level of samples without ``s2_type``.
            band_stats: statistics instead of :data:`MMEARTH_S2_BAND_STATS`.
            scale: factor applied first (10 000 for reflectances in [0, 1]).
            key: the sample entry to transform.

        Returns:
            :class:`BandRemap` followed by :class:`MMEarthS2Normalize` (each
            channel z-scored with the statistics of the band it holds).

        Raises:
            ValueError: if the dataset lacks a band of ``meta['bands']``.
        """
        remap = BandRemap(bands, self, fill=fill, key=key)
        normalize = MMEarthS2Normalize(
            remap.bands, band_stats=band_stats, level=level, key=key, scale=scale
        )
        return nn.Sequential(remap, normalize)


#: What the ``weights`` argument of the builders accepts: an
#: :class:`MMEarthWeights` member, its name (``'MMEarthWeights.S2_MP_MAE'``), or
#: the path or URL of a checkpoint.
WeightsArg: TypeAlias = 'WeightsEnum | str | os.PathLike[str] | None'

_ENUM_MEMBER = re.compile(r'(?P<enum>[A-Za-z_]\w*Weights)\.(?P<member>[A-Za-z_]\w*)')
_MODEL_NAME = re.compile(r'mmearth_convnextv2_([a-z]+?)(?:_p(8|16))?')


def _resolve(weights: WeightsArg) -> WeightsArg:
    """Turn ``'MMEarthWeights.X'`` into the member; return anything else."""
    if not isinstance(weights, str) or os.path.exists(weights):
        return weights
    match = _ENUM_MEMBER.fullmatch(weights)
    if match is None:
        return weights
    if match['enum'] != MMEarthWeights.__name__:
        # Another plugin's or TorchGeo's weights, which the builders then refuse
        # with their architecture.
        from torchgeo.models import get_weight

        foreign: WeightsEnum = get_weight(weights)
        return foreign
    member = MMEarthWeights.__members__.get(match['member'])
    if member is None:
        raise ValueError(
            f'{weights!r} is not a valid WeightsEnum member; MMEarthWeights has '
            f'{list(MMEarthWeights.__members__)}'
        )
    resolved: MMEarthWeights = member
    return resolved


def weights_state_dict(
    weights: WeightsArg, model: nn.Module | None = None
) -> dict[str, Tensor]:
    """The state dict of TorchGeo-style weights, resolved as TorchGeo's tasks do.

    Args:
        weights: a weights enum member, its name (``'MMEarthWeights.S2_MP_MAE'``)
            or a checkpoint file: official MP-MAE, ``export-weights`` output, a
            Lightning checkpoint (``model.`` keys are the network, as in
            TorchGeo's ``extract_backbone``), ``{'state_dict': ...}`` or a plain
            state dict.
        model: the model the weights are for; an :class:`MMEarthConvNeXtV2`
            gets any MMEarth format converted and checked
            (:func:`~torchgeo_mmearth.models.checkpoint_filter_fn`).

    Returns:
        The state dict.

    Raises:
        ValueError: if a file holds no state dict, or does not fit *model*.
    """
    weights = _resolve(weights)
    if isinstance(weights, WeightsEnum):
        state_dict: dict[str, Tensor] = weights.get_state_dict(progress=True)
        return state_dict
    if weights is None:
        raise ValueError('weights: expected weights, their name or a file, got None')
    path = os.fspath(weights)
    checkpoint = load_checkpoint(path)
    if isinstance(model, MMEarthConvNeXtV2):
        return checkpoint_filter_fn(checkpoint, model)
    if isinstance(checkpoint, Mapping) and 'hyper_parameters' in checkpoint:
        return {
            key.removeprefix('model.'): value
            for key, value in checkpoint['state_dict'].items()
            if key.startswith('model.')
        }
    if isinstance(checkpoint, Mapping) and isinstance(
        checkpoint.get('state_dict'), Mapping
    ):
        return dict(checkpoint['state_dict'])
    if isinstance(checkpoint, Mapping) and all(
        isinstance(value, Tensor) for value in checkpoint.values()
    ):
        return dict(checkpoint)
    raise ValueError(
        f'{path} is neither a Lightning checkpoint, a {{"state_dict": ...}} file '
        'nor a state dict'
    )


def pretraining_checkpoint(weights: WeightsArg) -> Mapping[str, Any]:
    """The whole MP-MAE checkpoint that TorchGeo-style weights name, unconverted.

    For :meth:`~torchgeo_mmearth.models.MPMAE.load_pretrained`, which continues
    pretraining from the encoder, decoder, heads and task weights.

    Args:
        weights: an :class:`MMEarthWeights` member, its name
            (``'MMEarthWeights.S2_MP_MAE'``), or the path or URL of a checkpoint
            (an official ``checkpoint-199.pth``, a Lightning checkpoint of
            :class:`~torchgeo_mmearth.trainers.MPMAETask`).

    Returns:
        The unpickled checkpoint.

    Raises:
        ValueError: for weights of another enum (they hold no MP-MAE decoder).
        TypeError: if the file holds no dictionary.
    """
    weights = _resolve(weights)
    if isinstance(weights, MMEarthWeights):
        return weights.get_checkpoint()
    if isinstance(weights, WeightsEnum) or weights is None:
        raise ValueError(
            f'{weights!r} are not MP-MAE pretraining weights: continue pretraining '
            'from an MMEarthWeights member or an MP-MAE checkpoint file'
        )
    checkpoint = load_checkpoint(weights)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f'{os.fspath(weights)} holds a {type(checkpoint).__name__}, not a '
            'checkpoint dictionary'
        )
    return checkpoint


def _weights_architecture(weights: WeightsEnum) -> tuple[str, int, int]:
    """Size, patch size and input bands of weights for an MMEarth ConvNeXt V2."""
    meta = weights.meta
    match = _MODEL_NAME.fullmatch(str(meta.get('model', '')))
    if match is None or match[1] not in MMEARTH_CONVNEXTV2_SIZES:
        raise ValueError(
            f'{weights!r} is not for an MMEarth ConvNeXt V2: its '
            f"meta['model'] is {meta.get('model')!r}"
        )
    patch_size = int(meta.get('patch_size') or match[2] or 8)
    return match[1], patch_size, int(meta['in_chans'])


def _build(name: str, weights: WeightsArg, **kwargs: Any) -> MMEarthConvNeXtV2:
    """Build the timm model *name*, with TorchGeo-style weights loaded into it.

    The model takes the weights' input bands and patch size; an ``in_chans`` or
    ``patch_size`` that contradicts them is an error, as are weights of another
    size.
    """
    weights = _resolve(weights)
    if weights is None:
        return cast(MMEarthConvNeXtV2, timm.create_model(name, **kwargs))
    if kwargs.get('pretrained'):
        raise ValueError(
            f'{name}: pass either pretrained=True (the timm pretrained tag) or '
            f'weights={weights!r}, not both'
        )
    size, fixed_patch_size = _MODEL_NAME.fullmatch(name).groups()  # type: ignore[union-attr]
    bands: Sequence[str] = ()
    w_patch: Any
    w_in_chans: Any
    if isinstance(weights, WeightsEnum):
        w_size, w_patch, w_in_chans = _weights_architecture(weights)
        what = f'{weights!r}'
        bands = weights.meta.get('bands') or ()
        if w_size != size:
            raise ValueError(
                f'{what} are for {weights.meta["model"]} (ConvNeXt V2 {w_size}), '
                f'not for {name}'
            )
        state_dict: Any = weights.get_state_dict(progress=True)
    else:
        # A checkpoint file: an export says its bands and patch size, other
        # formats are checked by checkpoint_filter_fn against the model.
        state_dict = load_checkpoint(weights)
        meta = state_dict.get('meta') if isinstance(state_dict, Mapping) else None
        meta = meta if isinstance(meta, Mapping) else {}
        w_patch, w_in_chans = meta.get('patch_size'), meta.get('in_chans')
        bands = meta.get('bands') or ()
        what = f'the weights {weights!r}'
    if w_patch:
        if fixed_patch_size and int(w_patch) != int(fixed_patch_size):
            raise ValueError(
                f'{what} have patch size {w_patch}, {name} has {fixed_patch_size}; '
                f'use mmearth_convnextv2_{size}'
            )
        if kwargs.setdefault('patch_size', int(w_patch)) != int(w_patch):
            raise ValueError(
                f'{what} have patch size {w_patch}, got '
                f'patch_size={kwargs["patch_size"]}'
            )
    if w_in_chans and kwargs.setdefault('in_chans', int(w_in_chans)) != int(w_in_chans):
        listed = f' ({", ".join(bands)})' if bands else ''
        raise ValueError(
            f'{what} were pretrained on {w_in_chans} input bands{listed}, got '
            f'in_chans={kwargs["in_chans"]}; reorder or select the input bands '
            'with torchgeo_mmearth.transforms.remap_bands / BandRemap, or build the '
            'model without weights and load them with TorchGeo, which '
            're-initialises the first convolution'
        )
    if kwargs.get('features_only'):
        # A feature wrapper renames the parameters: let timm load the weights
        # into the model before it wraps it.
        overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
        kwargs['pretrained_cfg_overlay'] = {**overlay, 'state_dict': state_dict}
        kwargs['pretrained'] = True
        return cast(MMEarthConvNeXtV2, timm.create_model(name, **kwargs))
    model = cast(MMEarthConvNeXtV2, timm.create_model(name, **kwargs))
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=False)
    return model


def _builder(name: str, description: str) -> Callable[..., MMEarthConvNeXtV2]:
    """The TorchGeo builder of the timm model *name* (as torchgeo.models.resnet50)."""

    def builder(weights: WeightsArg = None, **kwargs: Any) -> MMEarthConvNeXtV2:
        return _build(name, weights, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"""MMEarth ConvNeXt V2 {description}, optionally with pretrained weights.

    The TorchGeo builder of the timm model of the same name.

    If you use this model in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771

    Args:
        weights: an :class:`MMEarthWeights` member, its name
            (``'MMEarthWeights.S2_MP_MAE'``), or the path or URL of a checkpoint
            in a format of :func:`~torchgeo_mmearth.models.checkpoint_filter_fn`.
        **kwargs: additional keyword arguments to pass to
            :func:`timm.create_model`.

    Returns:
        The model.

    Raises:
        ValueError: if the weights are for another architecture, or contradict
            ``in_chans`` or ``patch_size``.
    """
    return builder


#: The architectures of the official checkpoints, with weights.
mmearth_convnextv2_atto = _builder(
    'mmearth_convnextv2_atto', 'atto, patch size 8 or that of the weights'
)
mmearth_convnextv2_atto_p16 = _builder(
    'mmearth_convnextv2_atto_p16', 'atto, patch size 16'
)
mmearth_convnextv2_tiny = _builder(
    'mmearth_convnextv2_tiny', 'tiny, patch size 8 or that of the weights'
)


def _register_with_torchgeo(api: ModuleType) -> None:
    """Make TorchGeo's model API (get_model, get_weight, list_models) see the plugin.

    Args:
        api: ``torchgeo.models.api``.
    """
    for builder in (
        mmearth_convnextv2_atto,
        mmearth_convnextv2_atto_p16,
        mmearth_convnextv2_tiny,
    ):
        api._model[builder.__name__] = builder
        api._model_weights[builder.__name__] = MMEarthWeights
        api._model_weights[builder] = MMEarthWeights
