"""Pretrained MP-MAE weights for TorchGeo: :class:`MMEarthWeights` and its transforms.

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
(BGR) for the RGB models. :func:`remap_bands` and :class:`BandRemap` reorder and
select the bands of other datasets (BigEarthNet and GEO-Bench put B8 before
B8A) and refuse inputs that lack bands; :class:`MMEarthS2Normalize` z-scores raw
Sentinel-2 digital numbers with the MMEarth statistics of the tile's processing
level (L1C or L2A). ``weights.transforms_for(bands)`` chains the two.
"""

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, TypeAlias

import timm
import torch
from torch import Tensor, nn
from torchvision.models._api import Weights, WeightsEnum

from ..modalities import MODALITIES, S2_TYPES, SENTINEL2_INPUT_BANDS
from . import mmearth_convnextv2
from .checkpoints import (
    OFFICIAL_CHECKPOINTS,
    CheckpointDownloadError,
    OfficialCheckpoint,
    load_checkpoint,
)
from .mmearth_convnextv2 import checkpoint_filter_fn

__all__ = [
    'MMEARTH_S2_BAND_STATS',
    'SO2SAT_FILL',
    'WEIGHTS_DIR_VARIABLE',
    'BandRemap',
    'MMEarthS2Normalize',
    'MMEarthWeights',
    'canonical_band_name',
    'convert_checkpoint',
    'remap_bands',
]

#: ``{stats key: {'mean' | 'std': per-band values}}``, the layout of MMEarth's
#: ``<corpus>_band_stats.json``; the lists hold the 13 stored Sentinel-2 bands
#: (B1-B7, B8A, B8, B9, B10, B11, B12) or the 12 input bands (without B10).
BandStats: TypeAlias = Mapping[str, Mapping[str, Sequence[float]]]

#: Sentinel-2 statistics of MMEarth, in the band order of
#: :data:`~torchgeo_mmearth.modalities.SENTINEL2_INPUT_BANDS` (B1-B7, B8A, B8,
#: B9, B11, B12), per processing level, as digital numbers. MMEarth z-scores each
#: tile with the statistics of its level (MMEarth-data ``utils/normalization.py``:
#: 100 000 tiles, L1C and L2A separated by tile_info). The released band_stats
#: files (sid.erda.dk) cannot be read here; these values are the published copies
#: below. Which corpus (MMEarth, MMEarth64 or MMEarth100k) they were computed on is
#: not stated by either source: when you have the corpus, prefer its own
#: ``<corpus>_band_stats.json`` (``MMEarthS2Normalize(band_stats=path)``).
MMEARTH_S2_BAND_STATS: BandStats = {
    # L1C: the SENTINEL2_L1C_MEAN / SENTINEL2_L1C_STD constants of a public Google
    # Scenic LOCA-on-MMEarth configuration in the GitHub code index (the
    # repository name could not be established); its header quotes the
    # 'sentinel2_l1c' entry of band_stats.json, whose 13 std values are these 12
    # with B10 (61.707...) inserted: the lists are band_stats.json minus B10.
    'sentinel2_l1c': {
        'mean': (
            1864.880176877408,
            1656.9923384425733,
            1561.2433627865414,
            1633.6041005007844,
            1846.642924880421,
            2422.1354550099322,
            2706.1684786306714,
            2907.509651871235,
            2620.484567631748,
            974.4786592695265,
            2154.0573745085508,
            1464.8020890030184,
        ),
        'std': (
            1520.0684839687428,
            1575.4239525583005,
            1474.3747757041376,
            1734.9206729983894,
            1697.1412804437439,
            1584.959816138674,
            1577.9910344404889,
            1560.2251591506092,
            1519.2164490452863,
            823.3855623314192,
            1311.5885770761618,
            1140.1057025823181,
        ),
    },
    # L2A: lgordon99/mmearth-bench (MMEarth-Bench, arXiv 2602.06285),
    # normalization_data.json at a92db3f, entry "MPMAE" -> "Sentinel2" (the
    # statistics that benchmark feeds MP-MAE with, listed after its band
    # selection [0-6, 8, 7, 9, 10, 11], i.e. in this order); the same values are the
    # SENTINEL2_L2A_MEAN / _STD of the Scenic configuration above.
    'sentinel2_l2a': {
        'mean': (
            1349.3977794889083,
            1479.9521800379623,
            1720.3688077425966,
            1899.1848715975957,
            2253.9309600057886,
            2808.2001963620132,
            3003.424149045887,
            3149.5364927329806,
            3110.840562275062,
            3213.7636154015954,
            2399.086213373806,
            1811.7986415136786,
        ),
        'std': (
            2340.2916479338087,
            2375.872101251672,
            2256.8997709659416,
            2354.181051828758,
            2292.99569489449,
            2033.2166835293804,
            1920.1736418230105,
            1816.6152354201365,
            1988.1938283738782,
            1947.9031620588928,
            1473.224812450967,
            1390.6781165633136,
        ),
    },
}

#: Substitutes for the bands So2Sat lacks, as MMEarth's GEO-Bench m-so2sat runs
#: did (``BAND_NAMES_v1_full.json``): B1 is replaced by B2 and B9 by B8A. Pass it
#: as ``fill`` to :func:`remap_bands`, :class:`BandRemap` or
#: :meth:`MMEarthWeights.transforms_for`.
SO2SAT_FILL: Mapping[str, str] = {'B1': 'B2', 'B9': 'B8A'}

_S2_BAND_PATTERN = re.compile(
    r'(?:(?:s2|sentinel[-_ ]?2)[-_ .]?)?b(?:and)?[-_ ]?0*(\d{1,2})(a?)', re.IGNORECASE
)
_S2_BANDS: tuple[str, ...] = (
    *('B1', 'B2', 'B3', 'B4', 'B5', 'B6', 'B7', 'B8', 'B8A', 'B9', 'B10'),
    *('B11', 'B12'),
)


def canonical_band_name(name: str) -> str:
    """Spell a Sentinel-2 band name the way MMEarth does.

    Accepted spellings include those of TorchGeo's and GEO-Bench's datasets:
    ``B01``/``B1``, ``B08``, ``B8A``/``B8a``/``B08A``, ``S2_B8A`` (So2Sat),
    ``S2B8A``, ``sentinel2_b8a``, ``band_8a``, in any letter case.

    Args:
        name: a band name.

    Returns:
        ``'B1'`` ... ``'B12'`` or ``'B8A'``.

    Raises:
        ValueError: if *name* is not a Sentinel-2 band.
    """
    match = _S2_BAND_PATTERN.fullmatch(name.strip())
    band = f'B{int(match[1])}{match[2].upper()}' if match else ''
    if band not in _S2_BANDS:
        raise ValueError(
            f'{name!r} is not a Sentinel-2 band name; expected one of {_S2_BANDS} '
            "(also spelled 'B01', 'B8a', 'B08A', 'S2_B8A', ...)"
        )
    return band


def _canonical_or_none(name: str) -> str | None:
    try:
        return canonical_band_name(name)
    except ValueError:
        return None


def _target_bands(target: Any) -> tuple[str, ...]:
    if isinstance(target, WeightsEnum):
        return tuple(target.meta['bands'])
    if isinstance(target, str):
        raise TypeError(f'target must be a sequence of band names, got {target!r}')
    return tuple(target)


def _remap(
    source_bands: Sequence[str], target: Any, fill: Mapping[str, str] | None
) -> tuple[list[int], list[str]]:
    """Source index and canonical source band of every target band."""
    if isinstance(source_bands, str):
        raise TypeError(
            f'source_bands must be a sequence of band names, got {source_bands!r}'
        )
    target_bands = _target_bands(target)
    position: dict[str, int] = {}
    for i, name in enumerate(source_bands):
        band = _canonical_or_none(name)
        if band is None:
            continue  # another sensor's band (S1 VV, ...): never selected
        if band in position:
            raise ValueError(
                f'source_bands has {band} twice ({source_bands[position[band]]!r} and '
                f'{name!r}): the band order is ambiguous'
            )
        position[band] = i
    substitutes = {
        canonical_band_name(k): canonical_band_name(v) for k, v in (fill or {}).items()
    }
    index: list[int] = []
    used: list[str] = []
    missing: list[str] = []
    for name in target_bands:
        band = canonical_band_name(name)
        chosen = band if band in position else substitutes.get(band)
        if chosen is None or chosen not in position:
            missing.append(name)
            continue
        index.append(position[chosen])
        used.append(chosen)
    if missing:
        what = f'{target!r}' if isinstance(target, WeightsEnum) else 'the target'
        raise ValueError(
            f'the input lacks {missing}, which {what} expects (bands, in order: '
            f'{list(target_bands)}); the input has {list(source_bands)}. Pass fill= '
            'to substitute a neighbouring band (SO2SAT_FILL = '
            "{'B1': 'B2', 'B9': 'B8A'} is what MMEarth's GEO-Bench So2Sat runs did), "
            'use weights pretrained on the bands you have (MMEarthWeights.RGB_MAE '
            'for B2, B3, B4), or load the weights with TorchGeo into a model with '
            'your number of bands (it re-initialises the first convolution)'
        )
    return index, used


def remap_bands(
    source_bands: Sequence[str],
    target: 'Sequence[str] | WeightsEnum' = SENTINEL2_INPUT_BANDS,
    fill: Mapping[str, str] | None = None,
) -> list[int]:
    """Channel indices that turn an input's bands into the order of some weights.

    ``image[..., remap_bands(source, weights), :, :]`` has the bands of
    ``weights.meta['bands']`` in their order. Band names are matched by
    :func:`canonical_band_name`, so B8 and B8A are told apart whatever their
    order or spelling (BigEarthNet and GEO-Bench put B8 before B8A, MMEarth after);
    bands of other sensors in *source_bands* are skipped. A band the input lacks
    is an error, unless *fill* names a substitute for it.

    Args:
        source_bands: the input's band names, in channel order.
        target: the wanted band names, or weights whose ``meta['bands']`` to use.
        fill: ``{missing band: band to use instead}``, e.g. :data:`SO2SAT_FILL`.

    Returns:
        For every target band, the index of the input channel that feeds it.

    Raises:
        ValueError: if the input lacks a target band (and *fill* has no
            substitute that it has), has a band twice, or a name is not a
            Sentinel-2 band.
        TypeError: if a single string is given instead of a sequence of names.
    """
    return _remap(source_bands, target, fill)[0]


class BandRemap(nn.Module):
    """Reorder and select the bands of a sample or batch, see :func:`remap_bands`.

    Acts on ``sample[key]`` of shape (..., C, H, W) (one sample or a batch) and
    passes every other entry through, so it can serve as (part of) a TorchGeo
    datamodule's ``aug``.

    If you use this transform with MMEarth weights, please cite the following
    paper:

    * https://arxiv.org/abs/2405.02771
    """

    index: Tensor

    def __init__(
        self,
        source_bands: Sequence[str],
        target: 'Sequence[str] | WeightsEnum' = SENTINEL2_INPUT_BANDS,
        fill: Mapping[str, str] | None = None,
        key: str = 'image',
    ) -> None:
        """Initialize a new BandRemap instance.

        Args:
            source_bands: the input's band names, in channel order.
            target: the wanted band names, or weights whose ``meta['bands']`` to
                use.
            fill: ``{missing band: band to use instead}``, e.g. :data:`SO2SAT_FILL`.
            key: the sample entry to remap.

        Raises:
            ValueError: if the input lacks a target band, see :func:`remap_bands`.
        """
        super().__init__()
        index, used = _remap(source_bands, target, fill)
        self.source_bands = tuple(source_bands)
        #: The (canonical) input band that fills each output channel.
        self.bands = tuple(used)
        self.key = key
        self.register_buffer('index', torch.tensor(index), persistent=False)

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Remap the bands.

        Args:
            sample: a sample or batch with ``sample[key]`` of shape (..., C, H, W).

        Returns:
            A new dictionary whose ``key`` entry has the target bands.

        Raises:
            ValueError: if the entry does not have one channel per source band.
        """
        x: Tensor = sample[self.key]
        if x.ndim < 3 or x.shape[-3] != len(self.source_bands):
            raise ValueError(
                f'{self.key!r} must have {len(self.source_bands)} channels '
                f'({list(self.source_bands)}) at dimension -3, got shape '
                f'{tuple(x.shape)}'
            )
        out = dict(sample)
        out[self.key] = x.index_select(-3, self.index.to(x.device))
        return out

    def extra_repr(self) -> str:
        """Describe the mapping."""
        return f'{list(self.source_bands)} -> {list(self.bands)}, key={self.key!r}'


def _stats_table(band_stats: BandStats) -> dict[str, dict[str, tuple[float, float]]]:
    """``{level: {band: (mean, std)}}`` from band_stats.json-style statistics."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for level in S2_TYPES:
        entry = band_stats.get(f'sentinel2_{level}')
        if entry is None:
            continue
        means, stds = entry.get('mean'), entry.get('std')
        if means is None or stds is None or len(means) != len(stds):
            raise ValueError(
                f"band statistics 'sentinel2_{level}' need 'mean' and 'std' lists of "
                'equal length'
            )
        if len(means) == len(MODALITIES['sentinel2'].bands):
            bands: Sequence[str] = MODALITIES['sentinel2'].bands
        elif len(means) == len(SENTINEL2_INPUT_BANDS):
            bands = SENTINEL2_INPUT_BANDS
        else:
            raise ValueError(
                f"band statistics 'sentinel2_{level}' must list 13 values (stored "
                f'order {list(MODALITIES["sentinel2"].bands)}) or 12 (input order '
                f'{list(SENTINEL2_INPUT_BANDS)}), found {len(means)}'
            )
        table[level] = {
            band: (float(mean), float(std))
            for band, mean, std in zip(bands, means, stds, strict=True)
        }
    if not table:
        raise ValueError(
            "band statistics have neither 'sentinel2_l1c' nor 'sentinel2_l2a'; "
            f'entries present: {sorted(band_stats)}'
        )
    return table


class MMEarthS2Normalize(nn.Module):
    """Z-score raw Sentinel-2 digital numbers with the MMEarth statistics.

    MMEarth normalises each tile with the statistics of its processing level
    (L1C top-of-atmosphere or L2A surface reflectance, whose value
    distributions differ). The level of each sample comes from its ``s2_type``
    entry (0 or ``'l1c'`` = L1C, 1 or ``'l2a'`` = L2A; one per sample in a batch),
    as :class:`~torchgeo_mmearth.datasets.MMEarth` samples carry it, or else
    from *level*.

    The released checkpoints were pretrained on inputs normalised this way with
    no-data (digital number 0) z-scored like any value, so no-data is not
    treated specially here either.

    Acts on ``sample[key]`` of shape (..., C, H, W), one sample or a batch, on
    any device (the statistics follow the input), so it can serve as (part of) a
    TorchGeo datamodule's ``aug``. Outputs are float32.

    If you use this transform in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        bands: Sequence[str] = SENTINEL2_INPUT_BANDS,
        band_stats: BandStats | str | os.PathLike[str] | None = None,
        level: str | None = 'l2a',
        key: str = 'image',
        scale: float = 1.0,
    ) -> None:
        """Initialize a new MMEarthS2Normalize instance.

        Args:
            bands: the bands of the input channels, in order (any Sentinel-2
                bands; a band may repeat, as after a :data:`SO2SAT_FILL` remap).
            band_stats: MMEarth statistics (the content or path of a
                ``<corpus>_band_stats.json``, or the ``band_stats`` of a
                :class:`~torchgeo_mmearth.datasets.MMEarth` dataset); None for
                :data:`MMEARTH_S2_BAND_STATS`.
            level: ``'l1c'`` or ``'l2a'``: the processing level of inputs
                without an ``s2_type`` entry; None to require the entry.
            key: the sample entry to normalise.
            scale: factor applied to the input first, e.g. 10 000 for
                reflectances in [0, 1] (So2Sat).

        Raises:
            ValueError: for an unknown level or band, or statistics that lack a
                band.
        """
        super().__init__()
        if level is not None and level not in S2_TYPES:
            raise ValueError(f'level must be one of {S2_TYPES} or None, got {level!r}')
        if isinstance(bands, str):
            raise TypeError(f'bands must be a sequence of band names, got {bands!r}')
        if band_stats is None:
            band_stats = MMEARTH_S2_BAND_STATS
        elif isinstance(band_stats, str | os.PathLike):
            with open(band_stats) as file:
                band_stats = json.load(file)
            assert isinstance(band_stats, Mapping)
        table = _stats_table(band_stats)
        self.bands = tuple(canonical_band_name(band) for band in bands)
        self.levels = tuple(level for level in S2_TYPES if level in table)
        if level is not None and level not in self.levels:
            raise ValueError(
                f'level={level!r}, but the band statistics have no '
                f"'sentinel2_{level}' entry"
            )
        mean = torch.full((len(S2_TYPES), len(self.bands)), torch.nan)
        std = torch.full((len(S2_TYPES), len(self.bands)), torch.nan)
        for row, name in enumerate(S2_TYPES):
            for column, band in enumerate(self.bands):
                if name not in table:
                    continue
                m, s = table[name].get(band, (float('nan'), float('nan')))
                if not (math.isfinite(m) and s > 0):  # missing, NaN (L2A B10), std 0
                    raise ValueError(
                        f'the {name.upper()} band statistics have no usable mean '
                        f'and std for {band}'
                    )
                mean[row, column], std[row, column] = m, s
        self.register_buffer('mean', mean, persistent=False)
        self.register_buffer('std', std, persistent=False)
        self.level = level
        self.key = key
        self.scale = scale

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Normalise ``sample[key]``.

        Args:
            sample: a sample or batch; ``s2_type`` (if present) gives the level of
                each sample.

        Returns:
            A new dictionary with the normalised entry.

        Raises:
            ValueError: if the entry does not have one channel per band, or a
                sample's level has no statistics.
            KeyError: if a sample has no ``s2_type`` and *level* is None.
        """
        x: Tensor = sample[self.key]
        channels = len(self.bands)
        if x.ndim < 3 or x.shape[-3] != channels:
            raise ValueError(
                f'{self.key!r} must have {channels} channels ({list(self.bands)}) at '
                f'dimension -3, got shape {tuple(x.shape)}'
            )
        if self.mean.device != x.device:
            self.to(x.device)
        row = self._level_index(sample.get('s2_type'), x.device)
        mean, std = self.mean[row], self.std[row]  # (C,) or (B, C)
        shape = (*mean.shape[:-1], *(1,) * (x.ndim - 2 - mean.ndim), channels, 1, 1)
        values = x.to(torch.float32)
        if self.scale != 1.0:
            values = values * self.scale
        out = dict(sample)
        out[self.key] = (values - mean.reshape(shape)) / std.reshape(shape)
        return out

    def _level_index(self, s2_type: Any, device: torch.device) -> Tensor:
        """Row of the statistics of each sample: 0 = L1C, 1 = L2A."""
        if s2_type is None:
            if self.level is None:
                raise KeyError(
                    "the sample has no 's2_type' (0 = L1C, 1 = L2A) and no default "
                    "level was given: build the transform with level='l1c' or 'l2a'"
                )
            s2_type = self.level
        if isinstance(s2_type, str) or (
            isinstance(s2_type, Sequence) and all(isinstance(t, str) for t in s2_type)
        ):
            names = [s2_type] if isinstance(s2_type, str) else list(s2_type)
            unknown = [name for name in names if name.lower() not in S2_TYPES]
            if unknown:
                raise ValueError(f's2_type must be in {S2_TYPES}, got {unknown}')
            rows = [S2_TYPES.index(name.lower()) for name in names]
            index = torch.tensor(rows[0] if isinstance(s2_type, str) else rows)
        else:
            index = torch.as_tensor(s2_type).long()
        index = index.to(device)
        if len(self.levels) < len(S2_TYPES):
            available = torch.tensor(
                [S2_TYPES.index(level) for level in self.levels], device=device
            )
            if not bool(torch.isin(index, available).all()):
                raise ValueError(
                    'a sample has a processing level without band statistics; the '
                    f'statistics have {list(self.levels)} only'
                )
        return index

    def extra_repr(self) -> str:
        """Describe the transform."""
        return (
            f'bands={list(self.bands)}, level={self.level!r}, key={self.key!r}, '
            f'scale={self.scale}'
        )


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
        checkpoint = _CHECKPOINTS[self.name]
        map_location = map_location if map_location is not None else 'cpu'
        source = self._local_copy(model_dir)
        try:
            if source is not None:
                checkpoint_data = load_checkpoint(source, map_location=map_location)
            else:
                source = self.url
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
                f'{self!r}: {source} holds a {type(checkpoint_data).__name__}, not '
                'a checkpoint dictionary'
            )
        try:
            return convert_checkpoint(
                checkpoint_data, self.meta['model'], self.meta['in_chans']
            )
        except ValueError as error:
            raise ValueError(f'{self!r} ({source}): {error}') from None

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
        return (
            f'{error.reason}. To load a copy of {published} from disk instead, put '
            f'it at {error.cached}, or set {WEIGHTS_DIR_VARIABLE} to a folder '
            f'holding {published}, or pass its path: '
            f"{self!r}.get_state_dict('/path/to/checkpoint-199.pth')"
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


def _torchgeo_builders() -> dict[str, Any]:
    """Entry points that can load an :class:`MMEarthWeights` member."""
    names: dict[str, None] = {}
    for checkpoint in OFFICIAL_CHECKPOINTS:
        names[checkpoint.model] = None
        if not checkpoint.model.endswith('_p16'):
            names[f'{checkpoint.model}_p8'] = None
    return {name: getattr(mmearth_convnextv2, name) for name in names}


def _register_with_torchgeo(api: ModuleType) -> None:
    """Make TorchGeo's model API (get_model, get_weight, list_models) see the plugin.

    Args:
        api: ``torchgeo.models.api``.
    """
    for name, builder in _torchgeo_builders().items():
        api._model[name] = builder
        api._model_weights[name] = MMEarthWeights
        api._model_weights[builder] = MMEarthWeights
