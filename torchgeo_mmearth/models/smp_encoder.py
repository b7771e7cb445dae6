"""MMEarth ConvNeXt V2 encoders for segmentation-models-pytorch.

Importing this module registers every timm name of
:mod:`~torchgeo_mmearth.models.mmearth_convnextv2` (``mmearth_convnextv2_atto``,
``mmearth_convnextv2_atto_p16``, ...) as an smp encoder, so that
``smp.Unet(encoder_name='mmearth_convnextv2_atto', in_channels=12, classes=7)``
and TorchGeo's ``SemanticSegmentationTask(backbone='mmearth_convnextv2_atto')``
build a UNet on the MP-MAE encoder (Nedungadi et al., ECCV 2024,
https://arxiv.org/abs/2405.02771).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import segmentation_models_pytorch as smp
from segmentation_models_pytorch.encoders._base import EncoderMixin
from segmentation_models_pytorch.encoders._utils import patch_first_conv
from torch import Tensor
from torch.nn.modules.module import _IncompatibleKeys

from .mmearth_convnextv2 import (
    MMEARTH_CONVNEXTV2_SIZES,
    MMEarthConvNeXtV2,
    checkpoint_filter_fn,
)

__all__ = ('MMEarthConvNeXtV2Encoder', 'mmearth_encoders')


class MMEarthConvNeXtV2Encoder(MMEarthConvNeXtV2, EncoderMixin):  # type: ignore[misc]
    """The MMEarth ConvNeXt V2 encoder with the feature levels of MMEarth's UNet.

    The encoder is :class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2` without
    ``norm`` and ``head``, so its state-dict keys are the timm model's keys minus
    ``norm.*`` and ``head.*``. :meth:`forward` returns, as smp expects, the input
    followed by five feature maps, the skip connections of MMEarth's UNet:

    ===== ================================= ======== ======
    level output of                         channels stride
    ===== ================================= ======== ======
    0     (the input)                       in_chans 1
    1     initial 3x3 conv (``stem[:3]``)   dims[0]  1
    2     patch stem (``stem[3:]``)         dims[0]  P/8
    3     stage 1                           dims[1]  P/4
    4     stage 2                           dims[2]  P/2
    5     stage 3                           dims[3]  P
    ===== ================================= ======== ======

    Stage 0 feeds stage 1 but is not a skip connection, as in MMEarth's UNet.

    With P=8 the patch stem does not downsample, so levels 0, 1 and 2 share the
    input resolution. smp's UNet decoder (0.5 and later) resizes each decoder
    stage to the size of its skip connection (``F.interpolate(size=...)``), not by
    a fixed factor of 2, so it upsamples from stage 3 to stages 2 and 1 and to the
    stem output, keeps that size for the initial-conv skip and for its last block
    (which has no skip), and the output has the input's size for P=8 and P=16.

    If you use this model in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    # smp's capability flag: the encoder exports and compiles, but is not scriptable.
    _is_torch_scriptable = False

    def __init__(
        self,
        depths: Sequence[int],
        dims: Sequence[int],
        patch_size: int = 8,
        in_chans: int = 12,
        depth: int = 5,
        output_stride: int = 32,
        drop_path_rate: float = 0.0,
    ) -> None:
        """Initialize a new MMEarthConvNeXtV2Encoder instance.

        Args:
            depths: number of blocks of each of the four stages.
            dims: channels of each of the four stages.
            patch_size: total stride of the encoder, 8 or 16.
            in_chans: number of input bands; smp changes it with
                :meth:`set_in_channels`.
            depth: number of feature levels to compute, 1 to 5.
            output_stride: passed by smp's ``get_encoder``, which then calls
                :meth:`make_dilated` with it; the encoder cannot be dilated.
            drop_path_rate: stochastic depth rate of the last block.

        Raises:
            ValueError: if *depth* is not in 1..5 or another argument is out of
                range.
        """
        if not 1 <= depth <= 5:
            raise ValueError(f'depth must be in 1..5, got {depth}')
        super().__init__(
            in_chans=in_chans,
            depths=tuple(depths),
            dims=tuple(dims),
            patch_size=patch_size,
            drop_path_rate=drop_path_rate,
        )
        del self.norm, self.head
        stem_stride = patch_size // 8
        self._depth = depth
        self._in_channels = in_chans
        self._out_channels = [in_chans, dims[0], dims[0], dims[1], dims[2], dims[3]]
        self._reductions = (
            1,
            stem_stride,
            2 * stem_stride,
            4 * stem_stride,
            patch_size,
        )

    @property
    def output_stride(self) -> int:
        """Stride of the last computed feature level."""
        return self._reductions[self._depth - 1]

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Change the number of input bands of the first convolution.

        Args:
            in_channels: new number of input bands.
            pretrained: adapt the current weights (smp's rule: cycle the channels
                and rescale) instead of initialising them anew.
        """
        if in_channels == self._in_channels:
            return
        patch_first_conv(
            model=self,
            new_in_channels=in_channels,
            default_in_channels=self._in_channels,
            pretrained=pretrained,
        )
        self._in_channels = self.in_chans = in_channels
        self._out_channels[0] = in_channels

    def make_dilated(self, output_stride: int) -> None:
        """Check that no dilation is needed to reach *output_stride*.

        Args:
            output_stride: the largest stride the decoder accepts.

        Raises:
            ValueError: if *output_stride* is below the encoder's stride, which
                would need dilated convolutions.
        """
        if output_stride < self.output_stride:
            raise ValueError(
                f'output_stride={output_stride} needs dilation, which MMEarth '
                f'ConvNeXt V2 encoders do not support; their stride is the patch '
                f'size, {self.output_stride}'
            )

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        """Compute the feature levels.

        Args:
            x: input of shape (B, in_chans, H, W), H and W multiples of
                :attr:`output_stride`.

        Returns:
            The input and the first *depth* feature levels (see the class
            description).
        """
        levels = (
            self.stem[:3],
            self.stem[3:],
            self.stages[:2],
            self.stages[2],
            self.stages[3],
        )
        features = [x]
        for level in levels[: self._depth]:
            x = level(x)
            features.append(x)
        return features

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        """Load weights in any format of :func:`checkpoint_filter_fn`.

        ``norm`` and ``head`` entries are dropped, as smp's ResNet encoders drop
        ``fc``, so that the state dict of a whole timm model (TorchGeo's
        ``SemanticSegmentationTask`` loads with ``strict=True``) or an official
        MP-MAE checkpoint loads directly.

        Args:
            state_dict: the weights.
            strict: require every encoder entry.
            assign: assign the tensors instead of copying them.

        Returns:
            The missing and unexpected keys.
        """
        state_dict = checkpoint_filter_fn(state_dict, self, strict=strict)
        keys: _IncompatibleKeys = super().load_state_dict(
            state_dict, strict=strict, assign=assign
        )
        return keys


#: smp encoder registry entries, under the names of the timm models.
mmearth_encoders: dict[str, dict[str, Any]] = {
    f'mmearth_convnextv2_{size}{suffix}': {
        'encoder': MMEarthConvNeXtV2Encoder,
        'pretrained_settings': {},
        'params': {'depths': depths, 'dims': dims, 'patch_size': patch_size},
    }
    for size, (depths, dims) in MMEARTH_CONVNEXTV2_SIZES.items()
    for suffix, patch_size in (('', 8), ('_p16', 16))
}
smp.encoders.encoders.update(mmearth_encoders)
