"""No-data handling and normalisation of raw MMEarth samples, on any device."""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..modalities import IGNORE_INDEX, MODALITIES, Kind, Level, Modality

__all__ = ['BandStats', 'MMEarthNormalize']

#: ``{stats key: {'mean' | 'std' | 'min' | 'max': per-band values}}`` as stored in
#: ``<corpus>_band_stats.json``.
BandStats = Mapping[str, Mapping[str, Sequence[float]]]


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
    modality = MODALITIES[name]
    index = [modality.bands.index(band) for band in bands]
    means, stds = [], []
    for stats_key in modality.stats_keys:
        if stats_key not in band_stats:
            raise ValueError(
                f'Band statistics have no entry {stats_key!r} for modality {name!r}; '
                f'entries present: {sorted(band_stats)}'
            )
        entry = band_stats[stats_key]
        for field in ('mean', 'std'):
            if field not in entry or len(entry[field]) != len(modality.bands):
                found = len(entry[field]) if field in entry else 'no'
                raise ValueError(
                    f'Band statistics {stats_key!r} must list {len(modality.bands)} '
                    f'{field!r} values (bands {list(modality.bands)}), found {found}'
                )
        mean = torch.tensor([entry['mean'][i] for i in index], dtype=torch.float32)
        std = torch.tensor([entry['std'][i] for i in index], dtype=torch.float32)
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
