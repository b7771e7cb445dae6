"""The encoder that embeds scenes: weights, input bands and output stride."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torchgeo.models import get_weight
from torchvision.models._api import WeightsEnum

from ..evaluation import load_backbone
from ..modalities import SENTINEL2_INPUT_BANDS
from ..models import load_checkpoint
from ..transforms import BandRemap, MMEarthS2Normalize

__all__ = ['SceneEncoder', 'load_encoder']


@dataclass
class SceneEncoder:
    """An MMEarth ConvNeXt V2 encoder with what embedding a raster needs to know.

    Args:
        model: the encoder (timm model without classifier), in evaluation mode.
        weights: name of the weights (``'MMEarthWeights.S2_MP_MAE'`` or the
            file they were read from).
        model_name: the timm model name.
        bands: the input bands, in the order the encoder expects them.
        patch_size: total stride of the encoder: one output pixel per
            ``patch_size x patch_size`` input pixels.
        input_size: pretraining input size in pixels (None when unknown).
        provenance: what the weights' metadata says (corpus, SSL method, ...).
    """

    model: nn.Module
    weights: str
    model_name: str
    bands: tuple[str, ...]
    patch_size: int
    input_size: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        """Number of channels of the embeddings."""
        return int(getattr(self.model, 'num_features'))  # noqa: B009 (timm attribute)

    def transforms(
        self, source_bands: tuple[str, ...], fill: Mapping[str, str] | None = None
    ) -> nn.Sequential:
        """Band matching and MMEarth normalisation of raw Sentinel-2 digital numbers.

        Args:
            source_bands: the bands of the input rasters, in channel order.
            fill: substitutes for bands of :attr:`bands` the input lacks,
                ``{missing band: band to use instead}`` (see
                :class:`~torchgeo_mmearth.transforms.BandRemap`).

        Returns:
            :class:`~torchgeo_mmearth.models.BandRemap` (bands matched by name)
            followed by :class:`~torchgeo_mmearth.models.MMEarthS2Normalize`,
            whose statistics are chosen per sample by ``s2_type``.

        Raises:
            ValueError: naming the bands the input lacks.
        """
        remap = BandRemap(source_bands, self.bands, fill)
        return nn.Sequential(remap, MMEarthS2Normalize(remap.bands, level=None))

    def forward_features(self, images: Tensor) -> Tensor:
        """Feature map of a batch at stride :attr:`patch_size`.

        Args:
            images: (B, C, H, W) normalised input, H and W multiples of the patch
                size.

        Returns:
            (B, D, H / P, W / P) features.
        """
        out: Tensor = self.model.forward_features(images)  # type: ignore[operator]
        return out


def _file_metadata(path: str, data: Any) -> dict[str, Any]:
    """Model, bands, patch size of an export-weights file or MPMAETask checkpoint."""
    if isinstance(data, Mapping) and isinstance(data.get('meta'), Mapping):
        meta = dict(data['meta'])  # torchgeo-mmearth export-weights
    elif isinstance(data, Mapping) and isinstance(
        data.get('hyper_parameters'), Mapping
    ):
        hparams = data['hyper_parameters']
        record = data.get('mmearth') or {}
        meta = {
            'model': hparams.get('model'),
            'in_chans': hparams.get('in_channels'),
            'patch_size': hparams.get('patch_size'),
            'input_size': hparams.get('input_size'),
            'bands': (record.get('corpus') or {}).get('bands'),
            'corpus': (record.get('corpus') or {}).get('subset'),
            'ssl_method': 'mp-mae',
        }
    else:
        meta = {}
    if not meta.get('model') or not str(meta['model']).startswith('mmearth_'):
        raise ValueError(
            f'{path} is neither a torchgeo-mmearth export-weights file (with '
            "'meta') nor a Lightning checkpoint of MPMAETask (with "
            "hyper_parameters['model'] naming an mmearth_convnextv2_* model); pass "
            'one of those, or an MMEarthWeights member'
        )
    if not meta.get('bands'):
        in_chans = meta.get('in_chans') or len(SENTINEL2_INPUT_BANDS)
        if in_chans != len(SENTINEL2_INPUT_BANDS):
            raise ValueError(
                f'{path} does not name its {in_chans} input bands; only the 12 '
                'Sentinel-2 bands of MMEarth can be assumed'
            )
        # MPMAETask trains on MMEarth's Sentinel-2 input bands, in this order.
        meta['bands'] = list(SENTINEL2_INPUT_BANDS)
    return meta


def load_encoder(
    weights: WeightsEnum | str | os.PathLike[str], device: str | torch.device = 'cpu'
) -> SceneEncoder:
    """Build the encoder of some MMEarth weights.

    Args:
        weights: an :class:`~torchgeo_mmearth.models.MMEarthWeights` member or its
            name (``'MMEarthWeights.S2_MP_MAE'``), the output of ``torchgeo-mmearth
            export-weights``, or a Lightning checkpoint of
            :class:`~torchgeo_mmearth.trainers.MPMAETask`.
        device: where to put the encoder.

    Returns:
        The encoder, in evaluation mode.

    Raises:
        ValueError: if a file is neither kind of checkpoint, or its weights do
            not fit the architecture it names.
    """
    if isinstance(weights, str | os.PathLike) and os.path.exists(weights):
        path = str(weights)
        meta = _file_metadata(path, load_checkpoint(path))
        kwargs: dict[str, Any] = {'num_classes': 0, 'in_chans': len(meta['bands'])}
        if meta.get('patch_size'):
            kwargs['patch_size'] = int(meta['patch_size'])
        model = load_backbone(timm.create_model(meta['model'], **kwargs), path)
        name = str(Path(path).resolve())
    else:
        member = weights if isinstance(weights, WeightsEnum) else None
        if member is None:
            text = str(weights)
            try:
                member = get_weight(text)
            except (KeyError, ValueError) as error:
                raise ValueError(
                    f'weights={text!r} is neither an existing file nor the name '
                    "of a weights enum member such as 'MMEarthWeights.S2_MP_MAE'"
                ) from error
        meta = dict(member.meta)
        model = load_backbone(meta['model'], member)
        name = f'{type(member).__name__}.{member.name}'
    patch_size = int(getattr(model, 'patch_size', meta.get('patch_size') or 0))
    provenance = {
        key: meta[key]
        for key in ('dataset', 'corpus', 'ssl_method', 'checkpoint', 'input_size')
        if meta.get(key) is not None
    }
    return SceneEncoder(
        model=model.to(device).eval(),
        weights=name,
        model_name=str(meta['model']),
        bands=tuple(meta['bands']),
        patch_size=patch_size,
        input_size=meta.get('input_size'),
        provenance=provenance,
    )
