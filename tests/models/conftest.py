import argparse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from torchgeo_mmearth.models import MMEARTH_CONVNEXTV2_SIZES

OfficialCheckpoint = Callable[..., dict[str, Any]]


def official_checkpoint(
    size: str = 'atto', patch_size: int = 8, in_chans: int = 12, seed: int = 0
) -> dict[str, Any]:
    """A random ``checkpoint-199.pth`` of MP-MAE in the published format.

    The ``model`` entry has the keys and MinkowskiEngine shapes of FCMAE's sparse
    encoder (kernels (k*k, in, out), depthwise kernels (k*k, C), biases (1, C),
    LayerNorm and Linear wrapped as ``.ln`` / ``.linear``, GRN (1, C)), plus the
    decoder, projection, heads, mask token and loss weights that the converter
    must drop. Weights are scaled so that activations stay O(1) and GRN and the
    LayerNorm affines are far from identity.
    """
    depths, dims = MMEARTH_CONVNEXTV2_SIZES[size]
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=gen) * scale

    def conv(prefix: str, k: int, cin: int, cout: int) -> None:
        sd[f'{prefix}.kernel'] = rand(k * k, cin, cout, scale=(k * k * cin) ** -0.5)
        sd[f'{prefix}.bias'] = rand(1, cout, scale=0.1)

    def depthwise(prefix: str, k: int, channels: int) -> None:
        sd[f'{prefix}.kernel'] = rand(k * k, channels, scale=1 / k)
        sd[f'{prefix}.bias'] = rand(1, channels, scale=0.1)

    def norm(prefix: str, channels: int) -> None:
        sd[f'{prefix}.ln.weight'] = 1 + rand(channels, scale=0.2)
        sd[f'{prefix}.ln.bias'] = rand(channels, scale=0.2)

    def linear(prefix: str, cin: int, cout: int) -> None:
        sd[f'{prefix}.linear.weight'] = rand(cout, cin, scale=cin**-0.5)
        sd[f'{prefix}.linear.bias'] = rand(cout, scale=0.1)

    sd: dict[str, Tensor] = {}
    conv('encoder.initial_conv.0', 3, in_chans, dims[0])
    norm('encoder.initial_conv.1', dims[0])
    depthwise('encoder.stem.0', patch_size // 8, dims[0])
    norm('encoder.stem.1', dims[0])
    for i in range(3):
        norm(f'encoder.downsample_layers.{i}.0', dims[i])
        conv(f'encoder.downsample_layers.{i}.1', 2, dims[i], dims[i + 1])
    for s, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
        for b in range(depth):
            block = f'encoder.stages.{s}.{b}'
            depthwise(f'{block}.dwconv', 7, dim)
            norm(f'{block}.norm', dim)
            linear(f'{block}.pwconv1', dim, 4 * dim)
            sd[f'{block}.grn.gamma'] = rand(1, 4 * dim, scale=0.5)
            sd[f'{block}.grn.beta'] = rand(1, 4 * dim, scale=0.1)
            linear(f'{block}.pwconv2', 4 * dim, dim)
    # Everything FCMAE holds besides the encoder (shared decoder block, heads).
    sd['proj.weight'] = rand(512, dims[-1], 1, 1)
    sd['proj.bias'] = rand(512)
    sd['mask_token'] = rand(1, 512, 1, 1)
    sd['decoder_dict.sentinel2.0.dwconv.weight'] = rand(512, 1, 7, 7)
    sd['decoder_dict.sentinel2.0.grn.gamma'] = rand(1, 1, 1, 2048)
    sd['pred_dict.sentinel2.weight'] = rand(patch_size**2 * 12, 512, 1, 1)
    sd['pred_dict.biome.weight'] = rand(14, 512)
    sd['layer_norm_tmp.weight'] = rand(512)
    sd['loss_fn.log_vars'] = rand(12)
    return {
        'model': sd,
        'optimizer': {'state': {}, 'param_groups': []},
        'epoch': 199,
        'scaler': {},
        'args': argparse.Namespace(
            model=f'convnextv2_{size}', input_size=7 * patch_size, patch_size=patch_size
        ),
    }


@pytest.fixture
def make_official_checkpoint() -> OfficialCheckpoint:
    """Factory of random official MP-MAE checkpoints, see official_checkpoint."""
    return official_checkpoint


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run a test on one intra-op thread.

    The models here are tiny: on a shared 2-core machine, OpenMP barriers in the
    many small parallel regions (float64 depthwise convolutions run one per
    channel) cost far more than the second thread gains.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
