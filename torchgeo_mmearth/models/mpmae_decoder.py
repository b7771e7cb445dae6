"""Multi-pretext decoder and prediction heads of MP-MAE.

MP-MAE (Nedungadi et al., "MMEarth: Exploring Multi-Modal Pretext Tasks For
Geospatial Representation Learning", ECCV 2024, https://arxiv.org/abs/2405.02771)
reconstructs masked Sentinel-2 patches and, from the same encoder features,
predicts the other MMEarth modalities: pixel-level maps (Sentinel-1, elevation,
canopy height, land cover) for the masked patches and image-level vectors and
classes (climate, location, date, biome, ecoregion) for the whole tile.

The task descriptions (:class:`~torchgeo_mmearth.modalities.PretextTask`) and the patch
layout shared by the heads and the losses (:func:`~torchgeo_mmearth.losses.patchify`)
live in :mod:`torchgeo_mmearth.losses.tasks`.
"""

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from timm.layers.grn import GlobalResponseNorm
from timm.layers.norm import LayerNorm2d
from timm.models.convnext import ConvNeXtBlock
from torch import Tensor, nn

from ..modalities import Level, PretextTask, check_tasks

__all__ = ['DecoderInit', 'MultiPretextDecoder']

#: Weight initialisation schemes of :class:`MultiPretextDecoder`.
DecoderInit = Literal['reference', 'timm']


def _decoder(dim: int, depth: int, grn_eps: float) -> nn.Sequential:
    """ConvNeXt V2 blocks of width *dim*, as the encoder's (timm, no conv MLP)."""
    blocks = []
    for _ in range(depth):
        block = ConvNeXtBlock(dim, conv_mlp=False, use_grn=True, ls_init_value=None)
        # timm has no argument for the GRN epsilon of a block.
        for module in block.modules():
            if isinstance(module, GlobalResponseNorm):
                module.eps = grn_eps
        blocks.append(block)
    return nn.Sequential(*blocks)


class MultiPretextDecoder(nn.Module):
    """Decoder and prediction heads of the MP-MAE multi-pretext masked autoencoder.

    The encoder features of the visible patches are projected to *decoder_dim*
    channels, the masked grid cells are replaced by a learned mask token, and
    *decoder_depth* ConvNeXt V2 blocks decode the grid. Then, per task:

    * pixel level: a 1x1 convolution predicts the ``P * P * C`` values of each
      patch, returned as ``(B, G_h * G_w, P * P * C)`` in the layout of
      :func:`~torchgeo_mmearth.losses.patchify` (``C`` regressed channels, or ``C`` class logits for a
      categorical map; :func:`~torchgeo_mmearth.losses.unpatchify` turns them into maps);
    * image level: a LayerNorm over channels, a global average over the whole grid
      (mask-token cells included, as in the reference) and a linear layer give
      ``(B, C)`` values or logits.

    **Shared decoder.** The reference (vishalned/MMEarth-train) wraps the same block
    instances once per task, so all tasks share one decoder, and it keeps a single
    LayerNorm for all image-level heads; the released checkpoints were trained so.
    ``shared_decoder=True`` (the default) reproduces that sharing, but computes the
    decoder once per forward pass instead of once per task (same result, 1/T of the
    decoder compute for T tasks). ``shared_decoder=False`` gives every task its own
    decoder (and every image-level task its own LayerNorm), the likely intent of the
    reference: parameters and FLOPs of the decoder then grow linearly with the number
    of tasks. One block of width 512 has 2.13 M parameters and costs about 0.1 GMAC
    per sample on a 7 x 7 grid, so the 12 MP-MAE tasks need 25.6 M decoder
    parameters and about 1.25 GMAC per sample instead of 2.13 M and 0.1 GMAC.

    **Initialisation.** ``init='reference'`` (the default) reproduces the reference
    (inherited from ConvNeXt V2's FCMAE): every ``Conv2d`` (projection, pixel heads,
    the blocks' depthwise convolutions) gets a truncated normal with **std 1.0**
    (truncated at +-2), every ``Linear`` (block MLPs, image heads) std 0.02, biases
    0, LayerNorms (1, 0), GRN (0, 0) and the mask token N(0, 0.02). The std of 1.0 is
    most likely unintended (the other layers use 0.02): it makes the initial
    predictions and losses orders of magnitude larger. It is the default anyway
    because the published recipe (learning rate, warm-up, uncertainty weighting
    starting at 0) and every reported MP-MAE and ConvNeXt V2 FCMAE result were
    obtained with it, and no result supports changing it; the decoder is discarded
    after pretraining, so only its effect on the encoder matters. ``init='timm'``
    uses the conventional truncated normal with std 0.02 for every ``Conv2d`` and
    ``Linear`` (and the same mask token, norms and GRN).

    If you use this model in your research, please cite the following paper:

    * https://arxiv.org/abs/2405.02771
    """

    def __init__(
        self,
        encoder_dim: int,
        patch_size: int,
        tasks: Sequence[PretextTask],
        decoder_dim: int = 512,
        decoder_depth: int = 1,
        shared_decoder: bool = True,
        init: DecoderInit = 'reference',
        grn_eps: float = 1e-4,
    ) -> None:
        """Initialize a new MultiPretextDecoder instance.

        Args:
            encoder_dim: channels of the encoder features.
            patch_size: side *P* in pixels of the patch that one grid cell of the
                encoder features covers (the total encoder stride: 8 for 56 px
                inputs, 16 for 112 px inputs).
            tasks: pretext tasks to predict, e.g. :func:`~torchgeo_mmearth.modalities.default_pretext_tasks`;
                names must be unique.
            decoder_dim: channels of the decoder.
            decoder_depth: number of ConvNeXt V2 blocks (0: no block).
            shared_decoder: one decoder for all tasks, computed once (True, the
                released checkpoints), or one decoder per task (False).
            init: ``'reference'`` or ``'timm'`` weight initialisation (see above).
            grn_eps: epsilon of the blocks' Global Response Normalization. The
                reference decoder uses 1e-4; timm and the original ConvNeXt V2
                use 1e-6.

        Raises:
            ValueError: for an empty or duplicated task list, a non-positive
                *encoder_dim*, *decoder_dim* or *patch_size*, a negative
                *decoder_depth* or an unknown *init*.
        """
        super().__init__()
        tasks = check_tasks(tasks)
        for argument, value in (
            ('encoder_dim', encoder_dim),
            ('decoder_dim', decoder_dim),
            ('patch_size', patch_size),
        ):
            if value < 1:
                raise ValueError(f'{argument} must be positive, got {value}')
        if decoder_depth < 0:
            raise ValueError(f'decoder_depth must be >= 0, got {decoder_depth}')
        if init not in get_args(DecoderInit):
            raise ValueError(
                f'Unknown init {init!r}; valid choices are {get_args(DecoderInit)}'
            )

        self.encoder_dim = encoder_dim
        self.patch_size = patch_size
        self.tasks = tasks
        self.decoder_dim = decoder_dim
        self.decoder_depth = decoder_depth
        self.shared_decoder = shared_decoder
        self.init = init

        self.proj = nn.Conv2d(encoder_dim, decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))

        image_tasks = [task.name for task in tasks if task.level is Level.IMAGE]
        self.decoder: nn.Sequential | None = None
        self.image_norm: LayerNorm2d | None = None
        self.decoders = nn.ModuleDict()
        self.image_norms = nn.ModuleDict()
        if shared_decoder:
            self.decoder = _decoder(decoder_dim, decoder_depth, grn_eps)
            if image_tasks:
                self.image_norm = LayerNorm2d(decoder_dim, eps=1e-6)
        else:
            for task in tasks:
                self.decoders[task.name] = _decoder(decoder_dim, decoder_depth, grn_eps)
            for name in image_tasks:
                self.image_norms[name] = LayerNorm2d(decoder_dim, eps=1e-6)

        self.heads = nn.ModuleDict()
        for task in tasks:
            if task.level is Level.PIXEL:
                out = patch_size * patch_size * task.channels
                self.heads[task.name] = nn.Conv2d(decoder_dim, out, kernel_size=1)
            else:
                self.heads[task.name] = nn.Linear(decoder_dim, task.channels)

        self.init_weights()

    def init_weights(self) -> None:
        """(Re-)initialise every parameter with the scheme chosen by ``init``."""
        conv_std = 1.0 if self.init == 'reference' else 0.02
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                std = conv_std if isinstance(module, nn.Conv2d) else 0.02
                # The weight is drawn elementwise, so viewing it 2-D as the reference
                # does changes nothing.
                nn.init.trunc_normal_(module.weight, std=std, a=-2.0, b=2.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, GlobalResponseNorm):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def embed(self, features: Tensor, mask: Tensor) -> Tensor:
        """Project the encoder features and put the mask token in masked cells.

        Args:
            features: encoder features of shape ``(B, encoder_dim, G_h, G_w)``;
                values in masked cells are ignored.
            mask: ``(B, G_h, G_w)`` (or ``(B, G_h * G_w)``), True or 1 where the
                patch was masked (removed from the encoder input).

        Returns:
            The decoder input, ``(B, decoder_dim, G_h, G_w)``.

        Raises:
            ValueError: if *features* does not have *encoder_dim* channels or *mask*
                does not match its grid.
        """
        if features.ndim != 4 or features.shape[1] != self.encoder_dim:
            raise ValueError(
                f'features must be (B, encoder_dim={self.encoder_dim}, G_h, G_w), '
                f'got shape {tuple(features.shape)}'
            )
        batch, _, rows, cols = features.shape
        if mask.shape not in ((batch, rows, cols), (batch, rows * cols)):
            raise ValueError(
                f'mask must be ({batch}, {rows}, {cols}) to match the features, '
                f'got shape {tuple(mask.shape)}'
            )
        masked = mask.reshape(batch, 1, rows, cols) != 0
        # Same values as the reference's x * (1 - m) + token * m for a binary mask,
        # and robust to non-finite values left in masked cells.
        projected: Tensor = self.proj(features)
        token = self.mask_token.to(projected.dtype)
        return torch.where(masked, token, projected)

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Predict every pretext task from the encoder features.

        Args:
            features: encoder features of shape ``(B, encoder_dim, G_h, G_w)``.
            mask: ``(B, G_h, G_w)`` (or ``(B, G_h * G_w)``), True or 1 where the
                patch was masked.

        Returns:
            Predictions by task name: ``(B, G_h * G_w, P * P * C)`` for pixel-level
            tasks (layout of :func:`~torchgeo_mmearth.losses.patchify`) and ``(B, C)`` for image-level tasks,
            with ``C`` the task's channels (class logits for categorical tasks).

        Raises:
            ValueError: if *features* or *mask* has the wrong shape.
        """
        x = self.embed(features, mask)
        outputs: dict[str, Tensor] = {}
        if self.decoder is not None:
            decoded: Tensor = self.decoder(x)
            pooled = None
            if self.image_norm is not None:
                pooled = self.image_norm(decoded).mean(dim=(-2, -1))
            for task in self.tasks:
                outputs[task.name] = self._predict(task, decoded, pooled)
        else:
            for task in self.tasks:
                decoded = self.decoders[task.name](x)
                pooled = None
                if task.level is Level.IMAGE:
                    pooled = self.image_norms[task.name](decoded).mean(dim=(-2, -1))
                outputs[task.name] = self._predict(task, decoded, pooled)
        return outputs

    def _predict(
        self, task: PretextTask, decoded: Tensor, pooled: Tensor | None
    ) -> Tensor:
        """Apply the head of *task* to the decoded grid or its pooled vector."""
        head = self.heads[task.name]
        if task.level is Level.IMAGE:
            assert pooled is not None
            vector: Tensor = head(pooled)
            return vector
        # (B, P*P*C, G_h, G_w) -> (B, G_h * G_w, P*P*C), patches row-major.
        patches: Tensor = head(decoded).flatten(2).transpose(1, 2)
        return patches
