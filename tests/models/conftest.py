import argparse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from torchgeo_mmearth.models import MMEARTH_CONVNEXTV2_SIZES

OfficialCheckpoint = Callable[..., dict[str, Any]]


# The pretext tasks of the "all modalities" checkpoints, in the order of
# MMEarth-train's OUT_MODALITIES (which orders pred_dict and loss_fn.log_vars),
# with their output channels (classes for the categorical ones) and level.
OFFICIAL_OUTPUTS: dict[str, tuple[int, bool]] = {
    'sentinel2': (12, True),
    'sentinel1': (8, True),
    'aster': (2, True),
    'era5': (12, False),
    'dynamic_world': (9, True),
    'canopy_height_eth': (2, True),
    'lat': (2, False),
    'lon': (2, False),
    'biome': (14, False),
    'eco_region': (846, False),
    'month': (2, False),
    'esa_worldcover': (11, True),
}


def official_checkpoint(
    size: str = 'atto',
    patch_size: int = 8,
    in_chans: int = 12,
    seed: int = 0,
    outputs: Sequence[str] | None = None,
    loss: str = 'uncertainty',
    decoder_dim: int = 512,
) -> dict[str, Any]:
    """A random ``checkpoint-199.pth`` of MP-MAE in the published format.

    The ``model`` entry is a whole FCMAE state dict: the keys and MinkowskiEngine
    shapes of the sparse encoder (kernels (k*k, in, out), depthwise kernels
    (k*k, C), biases (1, C), LayerNorm and Linear wrapped as ``.ln`` / ``.linear``,
    GRN (1, C)); ``proj``, ``mask_token``; the one decoder block that all tasks
    share, repeated under ``decoder_dict.<task>.0`` as the same tensors (dense
    ConvNeXt V2 ``Block`` names, GRN (1, 1, 1, C)); ``layer_norm_tmp``;
    ``pred_dict.<task>`` (1x1 convolutions for pixel-level tasks, linear layers
    for image-level ones); ``loss_fn.log_vars`` with *loss* 'uncertainty'. Weights
    are scaled so that activations stay O(1) and GRN and the LayerNorm affines
    are far from identity. ``args`` holds ``out_modalities`` (the task order).
    """
    depths, dims = MMEARTH_CONVNEXTV2_SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    tasks = list(OFFICIAL_OUTPUTS) if outputs is None else list(outputs)

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
    dim = decoder_dim
    sd['proj.weight'] = rand(dim, dims[-1], 1, 1, scale=dims[-1] ** -0.5)
    sd['proj.bias'] = rand(dim, scale=0.1)
    sd['mask_token'] = rand(1, dim, 1, 1)
    block = {
        'dwconv.weight': rand(dim, 1, 7, 7, scale=1 / 7),
        'dwconv.bias': rand(dim, scale=0.1),
        'norm.weight': 1 + rand(dim, scale=0.2),
        'norm.bias': rand(dim, scale=0.2),
        'pwconv1.weight': rand(4 * dim, dim, scale=dim**-0.5),
        'pwconv1.bias': rand(4 * dim, scale=0.1),
        'grn.gamma': rand(1, 1, 1, 4 * dim, scale=0.5),
        'grn.beta': rand(1, 1, 1, 4 * dim, scale=0.1),
        'pwconv2.weight': rand(dim, 4 * dim, scale=(4 * dim) ** -0.5),
        'pwconv2.bias': rand(dim, scale=0.1),
    }
    for task in tasks:
        # One shared block: the same tensors under every task, as FCMAE saves it.
        sd |= {f'decoder_dict.{task}.0.{key}': value for key, value in block.items()}
        channels, pixel_level = OFFICIAL_OUTPUTS[task]
        if task == 'sentinel2':
            channels = in_chans
        if pixel_level:
            out = patch_size**2 * channels
            sd[f'pred_dict.{task}.weight'] = rand(out, dim, 1, 1, scale=dim**-0.5)
            sd[f'pred_dict.{task}.bias'] = rand(out, scale=0.1)
        else:
            sd[f'pred_dict.{task}.weight'] = rand(channels, dim, scale=dim**-0.5)
            sd[f'pred_dict.{task}.bias'] = rand(channels, scale=0.1)
        if not pixel_level:
            sd['layer_norm_tmp.weight'] = 1 + rand(dim, scale=0.2)
            sd['layer_norm_tmp.bias'] = rand(dim, scale=0.2)
    if loss == 'uncertainty':
        sd['loss_fn.log_vars'] = rand(len(tasks), scale=0.5)
    return {
        'model': sd,
        'optimizer': {'state': {}, 'param_groups': []},
        'epoch': 199,
        'scaler': {},
        'args': argparse.Namespace(
            model=f'convnextv2_{size}',
            input_size=7 * patch_size,
            patch_size=patch_size,
            out_modalities={task: 'all' for task in tasks},
            loss_aggr=loss,
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
