"""No-data handling and normalisation of raw MMEarth samples, on any device."""

import math
from collections.abc import Mapping, Sequence
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
                self.register_buffer(f'mean_{name}', mean, persistent=False)
                self.register_buffer(f'std_{name}', std, persistent=False)
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
                out[key] = lut.to(x.device)[x.long()]
        return out

    def _zscore(self, name: str, x: Tensor, s2_type: Tensor | None) -> Tensor:
        modality = MODALITIES[name]
        mean: Tensor = getattr(self, f'mean_{name}').to(x.device)
        std: Tensor = getattr(self, f'std_{name}').to(x.device)
        if len(modality.stats_keys) > 1:
            if s2_type is None:
                raise KeyError(
                    f'{name} needs the per-tile statistics index "s2_type" '
                    '(0 = L1C, 1 = L2A) in the sample'
                )
            index = s2_type.to(device=x.device, dtype=torch.long)
        else:
            index = torch.zeros((), dtype=torch.long, device=x.device)
        mean, std = mean[index], std[index]  # (C,) or (B, C)
        if modality.level is Level.PIXEL:
            mean, std = mean[..., None, None], std[..., None, None]

        values = x.float()
        low, high = modality.valid_range
        valid = torch.isfinite(values)
        if not math.isinf(low):
            valid &= values >= low
        if not math.isinf(high):
            valid &= values <= high
        values = torch.where(valid, values, torch.nan)
        return (values - mean) / std


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


def _class_lut(modality: Modality) -> Tensor:
    """Lookup table from every storable code to its class index or the ignore index."""
    lut = torch.full((np.iinfo(modality.dtype).max + 1,), IGNORE_INDEX)
    lut[list(modality.class_values)] = torch.arange(modality.num_classes)
    return lut
