"""Band selection and order: from a dataset's bands to those some weights expect.

The models expect their bands in the order they were pretrained on (the
``meta['bands']`` of :class:`~torchgeo_mmearth.models.MMEarthWeights`): Sentinel-2
B1-B7, **B8A, B8**, B9, B11, B12, or B2, B3, B4 (BGR) for the RGB models.
:func:`remap_bands` and :class:`BandRemap` reorder and select the bands of other
datasets (BigEarthNet and GEO-Bench put B8 before B8A), matched by
:func:`~torchgeo_mmearth.modalities.canonical_band_name`, and refuse inputs that
lack bands.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models._api import WeightsEnum

from ..modalities import SENTINEL2_INPUT_BANDS, canonical_band_name

__all__ = ['SO2SAT_FILL', 'BandRemap', 'remap_bands']

#: Substitutes for the bands So2Sat lacks, as MMEarth's GEO-Bench m-so2sat runs
#: did (``BAND_NAMES_v1_full.json``): B1 is replaced by B2 and B9 by B8A. Pass it
#: as ``fill`` to :func:`remap_bands`, :class:`BandRemap` or
#: :meth:`MMEarthWeights.transforms_for`.
SO2SAT_FILL: Mapping[str, str] = {'B1': 'B2', 'B9': 'B8A'}


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
