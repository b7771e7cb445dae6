"""Normalisation of raw MMEarth samples and of other datasets' Sentinel-2, on any device.

One transform, :class:`MMEarthNormalize`, z-scores every continuous modality with
the corpus band statistics (:mod:`torchgeo_mmearth.modalities.statistics`), per
tile with the statistics of its Sentinel-2 processing level, and turns class maps
into class indices. :class:`MMEarthS2Normalize` is the same transform set up for
the Sentinel-2 bands of any dataset, matched by band name, as the released
checkpoints expect their inputs.
"""

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..modalities import (
    IGNORE_INDEX,
    MMEARTH_S2_BAND_STATS,
    MODALITIES,
    S2_TYPES,
    SENTINEL2_INPUT_BANDS,
    BandStats,
    Kind,
    Level,
    Modality,
    band_statistics,
    canonical_band_name,
    check_data_version,
    nodata_values,
    read_band_stats,
)

__all__ = ['MMEarthNormalize', 'MMEarthS2Normalize']


class MMEarthNormalize(nn.Module):
    """Turn raw MMEarth samples or batches into model-ready tensors.

    Works on the raw dtypes the :class:`~torchgeo_mmearth.datasets.MMEarth` reader
    returns, one sample or a collated batch, on the CPU or on the device after
    transfer (the datamodule runs it in ``on_after_batch_transfer``):

    * continuous modalities: z-score with the corpus band statistics; Sentinel-2
      uses the L1C or L2A statistics of each tile (the ``s2_type`` entry of the
      sample: 0 or ``'l1c'`` = L1C, 1 or ``'l2a'`` = L2A, one per sample in a
      batch; *level* for samples without one). With *mask_nodata*, every no-data
      value (see :mod:`torchgeo_mmearth.modalities`) becomes NaN first, and a band
      without statistics (L2A B10, all zero) is all NaN;
    * class maps: stored codes become class indices (int64), anything outside the
      legend becomes :data:`~torchgeo_mmearth.modalities.IGNORE_INDEX`;
    * the no-data placeholders of the data release (*version*; see
      :data:`~torchgeo_mmearth.modalities.VERSION_NODATA`) become NaN or the
      ignore index too: ERA5 ``+inf`` and ESA WorldCover 255 in v001, NaN and 0 in
      v1.0. The rules above already catch both, so a tile gives the same output
      under either release;
    * image-level classes (already indices) and other entries pass through.

    The statistics live in buffers and follow the input to its device on first use,
    since Lightning does not move a datamodule's transforms.

    If you use this transform in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    def __init__(
        self,
        band_stats: BandStats | str | os.PathLike[str] | None,
        modality_bands: Mapping[str, Sequence[str]],
        *,
        keys: Mapping[str, str] | None = None,
        level: str | None = None,
        mask_nodata: bool = True,
        scale: float = 1.0,
        version: str | None = None,
    ) -> None:
        """Initialize a new MMEarthNormalize instance.

        Args:
            band_stats: the corpus band statistics, or the path of a
                ``<corpus>_band_stats.json``; None for
                :data:`~torchgeo_mmearth.modalities.MMEARTH_S2_BAND_STATS`.
            modality_bands: bands per modality, in sample order (as given to the
                dataset); Sentinel-2 bands in any spelling
                :func:`~torchgeo_mmearth.modalities.canonical_band_name` reads.
            keys: the sample entry of a modality, where it is not the modality's
                own key (``{'sentinel2': 'image'}`` for other datasets).
            level: ``'l1c'`` or ``'l2a'``: the processing level of Sentinel-2
                inputs without an ``s2_type`` entry; None to require the entry.
            mask_nodata: turn no-data values, and bands without statistics, into
                NaN; without it, every value is z-scored as it is (how the released
                checkpoints were pretrained) and a band without statistics is an
                error.
            scale: factor applied to continuous inputs first, e.g. 10 000 for
                reflectances in [0, 1] (So2Sat).
            version: the release of the MMEarth data (``'v001'`` or ``'v1.0'``, as
                the dataset's ``version``) whose no-data placeholders to flag; None
                flags those of every release.

        Raises:
            ValueError: for an unknown level, release or Sentinel-2 band, or
                statistics that lack an entry or a band.
            TypeError: if a modality's bands are a string.
        """
        super().__init__()
        if level is not None and level not in S2_TYPES:
            raise ValueError(f'level must be one of {S2_TYPES} or None, got {level!r}')
        #: The release whose no-data placeholders are flagged (None: every release).
        self.version = None if version is None else check_data_version(version)
        band_stats = read_band_stats(
            MMEARTH_S2_BAND_STATS if band_stats is None else band_stats
        )
        self.modality_bands: dict[str, tuple[str, ...]] = {}
        self.keys = {name: MODALITIES[name].key for name in modality_bands}
        self.keys.update(keys or {})
        self.level = level
        self.mask_nodata = mask_nodata
        self.scale = scale
        #: Rows of the statistics each modality has (S2_TYPES order for Sentinel-2).
        self._rows: dict[str, tuple[int, ...]] = {}
        #: The release's no-data placeholders of each continuous modality.
        self._placeholders: dict[str, tuple[float, ...]] = {}
        for name, bands in modality_bands.items():
            if isinstance(bands, str):
                raise TypeError(
                    f'the bands of {name} must be a sequence of band names, '
                    f'got {bands!r}'
                )
            if name == 'sentinel2':
                bands = [canonical_band_name(band) for band in bands]
            self.modality_bands[name] = tuple(bands)
            modality = MODALITIES[name]
            if modality.kind is Kind.CONTINUOUS:
                mean, std = self._statistics(band_stats, name)
                self.register_buffer(f'mean_{name}', mean, persistent=False)
                self.register_buffer(f'std_{name}', std, persistent=False)
                # z = x * scale + shift, one fused multiply-add per value
                self.register_buffer(f'scale_{name}', scale / std, persistent=False)
                self.register_buffer(f'shift_{name}', -mean / std, persistent=False)
                self._placeholders[name] = nodata_values(name, self.version)
            elif modality.level is Level.PIXEL:
                self.register_buffer(
                    f'lut_{name}',
                    _class_lut(modality, nodata_values(name, self.version)),
                    persistent=False,
                )

    def _statistics(self, band_stats: BandStats, name: str) -> tuple[Tensor, Tensor]:
        """Mean and std of the modality's bands, one row per statistics key."""
        modality, bands = MODALITIES[name], self.modality_bands[name]
        stats_keys = modality.stats_keys
        present = [i for i, key in enumerate(stats_keys) if key in band_stats]
        if len(stats_keys) > 1 and not present:
            raise ValueError(
                f'band statistics have none of {list(stats_keys)}; entries present: '
                f'{sorted(band_stats)}'
            )
        if len(stats_keys) == 1:
            present = [0]  # band_statistics names a missing entry
        level = self.level
        if name == 'sentinel2' and level and S2_TYPES.index(level) not in present:
            raise ValueError(
                f"level={level!r}, but the band statistics have no 'sentinel2_{level}' "
                'entry'
            )
        self._rows[name] = tuple(present)
        mean = torch.full((len(stats_keys), len(bands)), math.nan)
        std = torch.full((len(stats_keys), len(bands)), math.nan)
        for row in present:
            entry = band_statistics(band_stats, stats_keys[row], name)
            for column, band in enumerate(bands):
                m, s = entry.get(band, (math.nan, math.nan))
                if math.isfinite(m) and math.isfinite(s) and s > 0:
                    mean[row, column], std[row, column] = m, s
                elif not self.mask_nodata:
                    raise ValueError(
                        f'the {stats_keys[row]} band statistics have no usable mean '
                        f'and std for {band}'
                    )
        return mean, std

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Normalise one sample (``(..., C, H, W)`` maps) or one batch.

        Args:
            sample: raw sample or batch; modalities not selected at construction and
                other entries pass through unchanged.

        Returns:
            A new dictionary with the normalised modalities.

        Raises:
            ValueError: if a modality does not have one channel per band, or a
                sample's level has no statistics.
            KeyError: if Sentinel-2 comes without ``s2_type`` and *level* is None.
        """
        out = dict(sample)
        self._follow(sample)
        for name in self.modality_bands:
            modality = MODALITIES[name]
            key = self.keys[name]
            if key not in sample:
                continue
            x: Tensor = sample[key]
            if modality.kind is Kind.CONTINUOUS:
                out[key] = self._zscore(name, x, sample.get('s2_type'))
            elif modality.level is Level.PIXEL:
                lut: Tensor = getattr(self, f'lut_{name}')
                out[key] = lut[x.long()]
        return out

    def _follow(self, sample: Mapping[str, Any]) -> None:
        """Move the buffers to the device of the sample's tensors, once."""
        device = next(
            (v.device for v in sample.values() if isinstance(v, Tensor)), None
        )
        buffer = next(self.buffers(), None)
        if device is not None and buffer is not None and buffer.device != device:
            self.to(device)

    def _zscore(self, name: str, x: Tensor, s2_type: Any) -> Tensor:
        modality, bands = MODALITIES[name], self.modality_bands[name]
        spatial = 2 if modality.level is Level.PIXEL else 0
        channel_dim = -1 - spatial
        if x.ndim < 1 + spatial or x.shape[channel_dim] != len(bands):
            raise ValueError(
                f'{self.keys[name]!r} must have {len(bands)} channels '
                f'({list(bands)}) at dimension {channel_dim}, got shape '
                f'{tuple(x.shape)}'
            )
        scale: Tensor = getattr(self, f'scale_{name}')
        shift: Tensor = getattr(self, f'shift_{name}')
        if len(modality.stats_keys) > 1:
            index = self._level_index(name, s2_type, x.device)
        else:
            index = torch.zeros((), dtype=torch.long, device=x.device)
        scale, shift = scale[index], shift[index]  # (C,) or (B, C)
        # (B, C) against (B, [T,] C, H, W): the batch first, the channels before
        # the spatial dimensions.
        fill = x.ndim - spatial - scale.ndim
        shape = (*scale.shape[:-1], *(1,) * fill, len(bands), *(1,) * spatial)
        scale, shift = scale.reshape(shape), shift.reshape(shape)

        values = x.to(torch.float32)
        out = torch.addcmul(shift, values, scale)
        if not self.mask_nodata:
            return out
        # No-data is found on the stored values (exact in float32 for every stored
        # integer type), before the z-score.
        low, high = modality.valid_range
        invalid = ~torch.isfinite(values) if x.is_floating_point() else None
        for bound, outside in ((low, torch.lt), (high, torch.gt)):
            if not x.is_floating_point() and _always_holds(bound, outside, x.dtype):
                continue
            if not math.isinf(bound):
                hit = outside(values, bound)
                invalid = hit if invalid is None else invalid | hit
        for placeholder in self._placeholders[name]:
            hit = values.isnan() if math.isnan(placeholder) else values == placeholder
            invalid = hit if invalid is None else invalid | hit
        if invalid is None:
            return out
        return out.masked_fill_(invalid, torch.nan)

    def _level_index(self, name: str, s2_type: Any, device: torch.device) -> Tensor:
        """Row of the statistics of each sample: 0 = L1C, 1 = L2A."""
        if s2_type is None:
            if self.level is None:
                raise KeyError(
                    f"{name}: the sample has no 's2_type' (0 = L1C, 1 = L2A) and no "
                    "default level was given: build the transform with level='l1c' "
                    "or 'l2a'"
                )
            s2_type = self.level
        if isinstance(s2_type, str) or (
            isinstance(s2_type, Sequence) and all(isinstance(t, str) for t in s2_type)
        ):
            names = [s2_type] if isinstance(s2_type, str) else list(s2_type)
            unknown = [level for level in names if level.lower() not in S2_TYPES]
            if unknown:
                raise ValueError(f's2_type must be in {S2_TYPES}, got {unknown}')
            rows = [S2_TYPES.index(level.lower()) for level in names]
            index = torch.tensor(rows[0] if isinstance(s2_type, str) else rows)
        else:
            index = torch.as_tensor(s2_type).long()
        index = index.to(device)
        present = self._rows[name]
        # Checked only when a level lacks statistics: the check syncs with the GPU.
        if len(present) < len(S2_TYPES):
            available = torch.tensor(present, device=device)
            if not bool(torch.isin(index, available).all()):
                levels = [S2_TYPES[row] for row in present]
                raise ValueError(
                    'a sample has a processing level without band statistics; the '
                    f'statistics have {levels} only'
                )
        return index


def _always_holds(
    bound: float, outside: Callable[[Tensor, float], Tensor], dtype: torch.dtype
) -> bool:
    """Whether no value of an integer *dtype* lies outside *bound*."""
    info = torch.iinfo(dtype)
    return bound <= info.min if outside is torch.lt else bound >= info.max


def _class_lut(modality: Modality, placeholders: Sequence[float]) -> Tensor:
    """Lookup table from every storable code to its class index or the ignore index.

    Codes outside the legend, and the release's no-data *placeholders*, map to the
    ignore index.
    """
    lut = torch.full((np.iinfo(modality.dtype).max + 1,), IGNORE_INDEX)
    lut[list(modality.class_values)] = torch.arange(modality.num_classes)
    lut[[int(code) for code in placeholders]] = IGNORE_INDEX
    return lut


class MMEarthS2Normalize(MMEarthNormalize):
    """Z-score raw Sentinel-2 digital numbers of any dataset with the MMEarth statistics.

    :class:`MMEarthNormalize` for one entry (``sample[key]``, shape
    (..., C, H, W)) of Sentinel-2 bands matched by name. MMEarth normalises each
    tile with the statistics of its processing level (L1C top-of-atmosphere or L2A
    surface reflectance, whose value distributions differ): the level of each sample
    comes from its ``s2_type`` entry (0 or ``'l1c'`` = L1C, 1 or ``'l2a'`` = L2A; one
    per sample in a batch), as :class:`~torchgeo_mmearth.datasets.MMEarth` samples
    carry it, or else from *level*.

    The released checkpoints were pretrained on inputs normalised this way with
    no-data (digital number 0) z-scored like any value, so no-data is not treated
    specially here either. Works on any device (the statistics follow the input),
    so it can serve as (part of) a TorchGeo datamodule's ``aug``. Outputs are
    float32.

    If you use this transform in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

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
            TypeError: if *bands* is a string.
        """
        super().__init__(
            band_stats,
            {'sentinel2': bands},
            keys={'sentinel2': key},
            level=level,
            mask_nodata=False,
            scale=scale,
        )
        self.bands = self.modality_bands['sentinel2']
        self.key = key

    @property
    def mean(self) -> Tensor:
        """Mean of each band (columns) for L1C and L2A (rows; NaN where absent)."""
        return self.get_buffer('mean_sentinel2')

    @property
    def std(self) -> Tensor:
        """Standard deviation of each band, laid out as :attr:`mean`."""
        return self.get_buffer('std_sentinel2')

    def extra_repr(self) -> str:
        """Describe the transform."""
        return (
            f'bands={list(self.bands)}, level={self.level!r}, key={self.key!r}, '
            f'scale={self.scale}'
        )
