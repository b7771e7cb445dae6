"""MMEarth UNet: the segmentation model of the MMEarth downstream experiments."""

from collections import OrderedDict
from typing import cast

import torch
from timm.layers.norm import LayerNorm2d
from torch import Tensor, nn

from .mmearth_convnextv2 import MMEARTH_CONVNEXTV2_SIZES, _init_weights
from .smp_encoder import MMEarthConvNeXtV2Encoder

__all__ = ('MMEarthUNet',)


def _upsample_block(in_chans: int, out_chans: int, scale: int) -> nn.Sequential:
    """Nearest upsampling -> Conv 3x3 -> LayerNorm -> GELU, MMEarth's UpsampleBlock.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        scale: upsampling factor.

    Returns:
        The block, with MMEarth's submodule names.
    """
    return nn.Sequential(
        OrderedDict(
            upsample=nn.Upsample(scale_factor=scale, mode='nearest'),
            conv=nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1),
            norm=LayerNorm2d(out_chans, eps=1e-6),
            act=nn.GELU(),
        )
    )


class MMEarthUNet(nn.Module):
    """UNet on the MMEarth ConvNeXt V2 encoder, as fine-tuned by MMEarth.

    The encoder is :class:`~torchgeo_mmearth.models.MMEarthConvNeXtV2Encoder`
    (keys ``encoder.<timm keys>`` without ``norm`` and ``head``). The decoder
    follows MMEarth's ``ConvNeXtV2_unet``, with its key names: four upsampling
    blocks (nearest upsampling, Conv 3x3, LayerNorm, GELU), each followed by a
    concatenation with an encoder feature map,

    * ``upsample_layers.0``: dims[3] -> dims[3]/2, x2, then + stage-2 features;
    * ``upsample_layers.1``: 2 dims[2] -> dims[2]/2, x2, then + stage-1 features;
    * ``upsample_layers.2``: 2 dims[1] -> dims[1]/2, x2, then + stem features;
    * ``upsample_layers.3``: 2 dims[0] -> dims[0], x P/8, then + initial-conv
      features;

    then ``initial_conv_upsample`` (Conv 3x3 2 dims[0] -> dims[0]/2, LayerNorm,
    GELU) and ``head`` (Conv 1x1). The output has the input's size. MMEarth's
    model also holds its classifier's unused final LayerNorm; this one does not,
    so for atto, 12 bands and 7 classes it has 4 182 487 parameters with P=8
    (4 182 607 with P=16) against MMEarth's 4 183 127 (4 183 247).

    Load the official MP-MAE weights into the encoder with
    ``model.encoder.load_state_dict(torch.load(path, weights_only=False))``.

    If you use this model in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    def __init__(
        self,
        num_classes: int,
        size: str = 'atto',
        in_chans: int = 12,
        patch_size: int = 8,
        drop_path_rate: float = 0.0,
    ) -> None:
        """Initialize a new MMEarthUNet instance.

        Args:
            num_classes: number of output channels (classes).
            size: encoder size, a key of
                :data:`~torchgeo_mmearth.models.MMEARTH_CONVNEXTV2_SIZES`.
            in_chans: number of input bands.
            patch_size: total stride of the encoder, 8 or 16.
            drop_path_rate: stochastic depth rate of the encoder's last block.

        Raises:
            ValueError: for an unknown *size*, a *patch_size* other than 8 or 16,
                or *num_classes* < 1.
        """
        super().__init__()
        if size not in MMEARTH_CONVNEXTV2_SIZES:
            raise ValueError(
                f'size must be one of {list(MMEARTH_CONVNEXTV2_SIZES)}, got {size!r}'
            )
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        depths, dims = MMEARTH_CONVNEXTV2_SIZES[size]
        self.patch_size = patch_size
        self.encoder = MMEarthConvNeXtV2Encoder(
            depths, dims, patch_size, in_chans=in_chans, drop_path_rate=drop_path_rate
        )
        self.upsample_layers = nn.ModuleList(
            [
                _upsample_block(dims[3], dims[3] // 2, 2),
                _upsample_block(2 * dims[2], dims[2] // 2, 2),
                _upsample_block(2 * dims[1], dims[1] // 2, 2),
                _upsample_block(2 * dims[0], dims[0], patch_size // 8),
            ]
        )
        self.initial_conv_upsample = nn.Sequential(
            nn.Conv2d(2 * dims[0], dims[0] // 2, kernel_size=3, padding=1),
            LayerNorm2d(dims[0] // 2, eps=1e-6),
            nn.GELU(),
        )
        self.head = nn.Conv2d(dims[0] // 2, num_classes, kernel_size=1)
        for decoder_part in (
            self.upsample_layers,
            self.initial_conv_upsample,
            self.head,
        ):
            decoder_part.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        """Segment an image.

        Args:
            x: input of shape (B, in_chans, H, W), H and W multiples of the patch
                size.

        Returns:
            Logits of shape (B, num_classes, H, W).

        Raises:
            ValueError: if H or W is not a multiple of the patch size.
        """
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f'input height and width must be multiples of the patch size '
                f'{self.patch_size}, got {height} x {width}'
            )
        features = self.encoder(x)
        y = features[-1]
        # Skips, deepest first: stage 2, stage 1, stem, initial conv.
        for block, skip in zip(
            self.upsample_layers, reversed(features[1:-1]), strict=True
        ):
            y = torch.cat([block(y), skip], dim=1)
        return cast(Tensor, self.head(self.initial_conv_upsample(y)))
