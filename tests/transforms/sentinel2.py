"""Raw Sentinel-2 digital numbers and their expected z-scores, for the tests."""

from typing import Any

import torch
from torch import Tensor

from torchgeo_mmearth.modalities import MMEARTH_S2_BAND_STATS, SENTINEL2_INPUT_BANDS


def raw_s2(*shape: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 10_000, shape, generator=generator).to(torch.int16)


def zscore(x: Tensor, level: str, bands: Any = SENTINEL2_INPUT_BANDS) -> Tensor:
    stats = MMEARTH_S2_BAND_STATS[f'sentinel2_{level}']
    index = [SENTINEL2_INPUT_BANDS.index(b) for b in bands]
    mean = torch.tensor([stats['mean'][i] for i in index])[:, None, None]
    std = torch.tensor([stats['std'][i] for i in index])[:, None, None]
    return (x.float() - mean) / std
