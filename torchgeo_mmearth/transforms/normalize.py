"""Normalisation of raw MMEarth samples and of other datasets' Sentinel-2, on any device.

Both transforms z-score with the corpus band statistics
(:mod:`torchgeo_mmearth.modalities.statistics`), per tile with the statistics of
its Sentinel-2 processing level:

* :class:`MMEarthNormalize` turns every modality of a raw MMEarth sample into
  model-ready tensors (no-data to NaN, class codes to indices), for pretraining;
* :class:`MMEarthS2Normalize` z-scores the Sentinel-2 bands of any dataset,
  matched by band name, as the released checkpoints expect their inputs.
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
    read_band_stats,
)

__all__ = ['MMEarthNormalize', 'MMEarthS2Normalize']


class MMEarthNormalize(nn.Module):
    """Turn raw MMEarth samples or batches into model-ready tensors.

    Works on the raw dtypes the :class:`~torchgeo_mmearth.datasets.MMEarth` reader
    returns (``normalize=False``), one sample or a collated batch, on the CPU or on
    the device after transfer (the datamodule runs it in ``on_after_batch_transfer``):

    * continuous modalities: every no-data value (see
      :mod:`torchgeo_mmearth.modalities`) becomes NaN *before* the z-score with the
      corpus band statistics; Sentinel-2 uses the L1C or L2A statistics of each
      tile (the ``s2_type`` entry of the sample);
    * class maps: stored codes become class indices (int64), anything outside the
      legend becomes :data:`~torchgeo_mmearth.modalities.IGNORE_INDEX`;
    * image-level classes (already indices) and other entries pass through.

    The statistics live in buffers and follow the input to its device on first use,
    since Lightning does not move a datamodule's transforms.
    """

    def __init__(
        self, band_stats: BandStats, modality_bands: Mapping[str, Sequence[str]]
    ) -> None:
        """Initialize a new MMEarthNormalize instance.

        Args:
            band_stats: the corpus band statistics.
            modality_bands: bands per modality, in sample order (as given to the
                dataset).

        Raises:
            ValueError: if a statistics entry is missing or has the wrong number
                of bands.
        """
        super().__init__()
        self.modality_bands = {name: tuple(b) for name, b in modality_bands.items()}
        for name, bands in self.modality_bands.items():
            modality = MODALITIES[name]
            if modality.kind is Kind.CONTINUOUS:
                mean, std = _select_stats(band_stats, name, bands)
                # z = x * scale + shift, one fused multiply-add per value
                self.register_buffer(f'scale_{name}', 1 / std, persistent=False)
                self.register_buffer(f'shift_{name}', -mean / std, persistent=False)
            elif modality.level is Level.PIXEL:
                self.register_buffer(
                    f'lut_{name}', _class_lut(modality), persistent=False
                )

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Normalise one sample (``(C, H, W)`` maps) or one batch (``(B, C, H, W)``).

        Args:
            sample: raw sample or batch; modalities not selected at construction and
                other entries pass through unchanged.

        Returns:
            A new dictionary with the normalised modalities.
        """
        out = dict(sample)
        self._follow(sample)
        for name in self.modality_bands:
            modality = MODALITIES[name]
            key = modality.key
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

    def _zscore(self, name: str, x: Tensor, s2_type: Tensor | None) -> Tensor:
        modality = MODALITIES[name]
        scale: Tensor = getattr(self, f'scale_{name}')
        shift: Tensor = getattr(self, f'shift_{name}')
        if len(modality.stats_keys) > 1:
            if s2_type is None:
                raise KeyError(
                    f'{name} needs the per-tile statistics index "s2_type" '
                    '(0 = L1C, 1 = L2A) in the sample'
                )
            index = s2_type.to(device=x.device, dtype=torch.long)
        else:
            index = torch.zeros((), dtype=torch.long, device=x.device)
        scale, shift = scale[index], shift[index]  # (C,) or (B, C)
        if modality.level is Level.PIXEL:
            scale, shift = scale[..., None, None], shift[..., None, None]

        # No-data is found on the stored values (exact in float32 for every stored
        # integer type), before the z-score.
        values = x.to(torch.float32)
        low, high = modality.valid_range
        invalid = ~torch.isfinite(values) if x.is_floating_point() else None
        for bound, outside in ((low, torch.lt), (high, torch.gt)):
            if not x.is_floating_point() and _always_holds(bound, outside, x.dtype):
                continue
            if not math.isinf(bound):
                hit = outside(values, bound)
                invalid = hit if invalid is None else invalid | hit
        out = torch.addcmul(shift, values, scale)
        if invalid is None:
            return out
        return out.masked_fill_(invalid, torch.nan)


def _select_stats(
    band_stats: BandStats, name: str, bands: Sequence[str]
) -> tuple[Tensor, Tensor]:
    """Mean and std of *bands*, stacked over the modality's statistics keys."""
    means, stds = [], []
    for stats_key in MODALITIES[name].stats_keys:
        entry = band_statistics(band_stats, stats_key, name)
        stats = torch.tensor(
            [entry.get(band, (math.nan, math.nan)) for band in bands],
            dtype=torch.float32,
        )
        mean, std = stats.unbind(dim=1)
        # A band without statistics (L2A B10 is all zero, so its entry is NaN) has
        # no valid value: it normalises to NaN, i.e. no-data.
        unusable = ~torch.isfinite(mean) | ~torch.isfinite(std) | (std <= 0)
        mean[unusable] = torch.nan
        means.append(mean)
        stds.append(std)
    return torch.stack(means), torch.stack(stds)


def _always_holds(
    bound: float, outside: Callable[[Tensor, float], Tensor], dtype: torch.dtype
) -> bool:
    """Whether no value of an integer *dtype* lies outside *bound*."""
    info = torch.iinfo(dtype)
    return bound <= info.min if outside is torch.lt else bound >= info.max


def _class_lut(modality: Modality) -> Tensor:
    """Lookup table from every storable code to its class index or the ignore index."""
    lut = torch.full((np.iinfo(modality.dtype).max + 1,), IGNORE_INDEX)
    lut[list(modality.class_values)] = torch.arange(modality.num_classes)
    return lut


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
        band_stats = read_band_stats(band_stats or MMEARTH_S2_BAND_STATS)
        table = {
            name: band_statistics(band_stats, f'sentinel2_{name}', 'sentinel2')
            for name in S2_TYPES
            if f'sentinel2_{name}' in band_stats
        }
        if not table:
            raise ValueError(
                "band statistics have neither 'sentinel2_l1c' nor 'sentinel2_l2a'; "
                f'entries present: {sorted(band_stats)}'
            )
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
