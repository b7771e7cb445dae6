"""Slow, obviously correct sparse ConvNeXt V2 encoder, the test oracle.

A sparse tensor is a list of active sites (batch, row, column) at the current
resolution with one feature row per site, like MinkowskiEngine's coordinate map
and ``F`` matrix. Convolutions loop over kernel offsets and look neighbours up by
coordinate arithmetic; no dense convolution is involved. Normalisations act on
the rows of the feature matrix exactly as MinkowskiEngine's layers do.

A ``Conv2d`` weight ``w[o, i, ky, kx]`` is a cross-correlation: for stride-1
(submanifold) convolutions it multiplies the neighbour at offset
``(ky - k // 2, kx - k // 2)``, for kernel = stride convolutions the input at
``(s * row + ky, s * col + kx)``.
"""

from dataclasses import dataclass

import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn


@dataclass
class Sparse:
    coords: Tensor  # (N, 3) int64: batch, row, column; sorted row-major
    feats: Tensor  # (N, C)
    batch: int
    height: int
    width: int

    def with_feats(self, feats: Tensor) -> 'Sparse':
        return Sparse(self.coords, feats, self.batch, self.height, self.width)


def to_sparse(x: Tensor, active: Tensor) -> Sparse:
    coords = active[:, 0].nonzero()
    feats = x[coords[:, 0], :, coords[:, 1], coords[:, 2]]
    batch, _, height, width = x.shape
    return Sparse(coords, feats, batch, height, width)


def to_dense(s: Sparse) -> tuple[Tensor, Tensor]:
    out = s.feats.new_zeros(s.batch, s.height, s.width, s.feats.shape[1])
    out[s.coords[:, 0], s.coords[:, 1], s.coords[:, 2]] = s.feats
    mask = torch.zeros(s.batch, 1, s.height, s.width, dtype=torch.bool)
    mask[s.coords[:, 0], 0, s.coords[:, 1], s.coords[:, 2]] = True
    return out.permute(0, 3, 1, 2), mask


def _keys(coords: Tensor, height: int, width: int) -> Tensor:
    return (coords[:, 0] * height + coords[:, 1]) * width + coords[:, 2]


def lookup(s: Sparse, query: Tensor) -> Tensor:
    """Row of each queried coordinate in ``s``, -1 where it is not active."""
    inside = (
        (query[:, 1] >= 0)
        & (query[:, 1] < s.height)
        & (query[:, 2] >= 0)
        & (query[:, 2] < s.width)
    )
    keys = _keys(s.coords, s.height, s.width)
    if len(keys) == 0:
        return torch.full((len(query),), -1, dtype=torch.long)
    qkeys = _keys(query.clamp(min=0), s.height, s.width)
    pos = torch.searchsorted(keys, qkeys).clamp(max=len(keys) - 1)
    found = inside & (keys[pos] == qkeys)
    return torch.where(found, pos, -1)


def _accumulate(
    out: Tensor, rows: Tensor, feats: Tensor, weight: Tensor, depthwise: bool
) -> None:
    valid = rows >= 0
    src = feats[rows[valid]]
    if depthwise:
        contrib = src * weight[:, 0]
    else:
        contrib = src @ weight.T
    out[valid] += contrib


def submanifold_conv(s: Sparse, conv: nn.Conv2d) -> Sparse:
    kh, kw = conv.kernel_size
    depthwise = conv.groups == conv.in_channels and conv.groups > 1
    assert conv.groups == 1 or depthwise
    assert conv.stride == (1, 1) and kh % 2 == 1 and kw % 2 == 1
    out = s.feats.new_zeros(len(s.coords), conv.out_channels)
    if conv.bias is not None:
        out = out + conv.bias
    for ky in range(kh):
        for kx in range(kw):
            offset = torch.tensor([0, ky - kh // 2, kx - kw // 2])
            rows = lookup(s, s.coords + offset)
            _accumulate(out, rows, s.feats, conv.weight[:, :, ky, kx], depthwise)
    return s.with_feats(out)


def strided_conv(s: Sparse, conv: nn.Conv2d) -> Sparse:
    stride = conv.stride[0]
    assert conv.kernel_size == (stride, stride) == conv.stride
    depthwise = conv.groups == conv.in_channels and conv.groups > 1
    assert conv.groups == 1 or depthwise
    cells = s.coords.clone()
    cells[:, 1:] //= stride
    coords = torch.unique(cells, dim=0)  # sorted row-major
    out_s = Sparse(coords, s.feats, s.batch, s.height // stride, s.width // stride)
    out = s.feats.new_zeros(len(coords), conv.out_channels)
    if conv.bias is not None:
        out = out + conv.bias
    for ky in range(stride):
        for kx in range(stride):
            query = coords.clone()
            query[:, 1] = query[:, 1] * stride + ky
            query[:, 2] = query[:, 2] * stride + kx
            rows = lookup(s, query)
            _accumulate(out, rows, s.feats, conv.weight[:, :, ky, kx], depthwise)
    return out_s.with_feats(out)


def conv(s: Sparse, module: nn.Conv2d) -> Sparse:
    if module.stride == (1, 1):
        return submanifold_conv(s, module)
    return strided_conv(s, module)


def layer_norm(s: Sparse, norm: nn.LayerNorm) -> Sparse:
    f = s.feats
    mean = f.mean(dim=1, keepdim=True)
    var = ((f - mean) ** 2).mean(dim=1, keepdim=True)
    out = (f - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    return s.with_feats(out)


def linear(f: Tensor, fc: nn.Linear) -> Tensor:
    return f @ fc.weight.T + fc.bias


def grn(f: Tensor, samples: Tensor, module: nn.Module, pooling: str) -> Tensor:
    """MinkowskiGRN on a feature matrix: pooled over all rows, or per sample."""
    norms = torch.zeros_like(f)
    if pooling == 'batch':
        norms[:] = f.norm(p=2, dim=0, keepdim=True)
    else:
        for b in samples.unique():
            rows = samples == b
            norms[rows] = f[rows].norm(p=2, dim=0, keepdim=True)
    nx = norms / (norms.mean(dim=1, keepdim=True) + module.eps)
    return module.weight * (f * nx) + module.bias + f


def block(s: Sparse, blk: nn.Module, pooling: str) -> Sparse:
    h = conv(s, blk.conv_dw)
    h = layer_norm(h, blk.norm).feats
    h = linear(h, blk.mlp.fc1)
    h = torch.nn.functional.gelu(h)
    h = grn(h, s.coords[:, 0], blk.mlp.grn, pooling)
    h = linear(h, blk.mlp.fc2)
    return s.with_feats(s.feats + h)


def sequence(s: Sparse, seq: nn.Module) -> Sparse:
    modules = list(seq) if isinstance(seq, nn.Sequential) else [seq]
    for m in modules:
        if isinstance(m, nn.Conv2d):
            s = conv(s, m)
        elif isinstance(m, LayerNorm2d):
            s = layer_norm(s, m)
        elif isinstance(m, nn.Identity):
            pass
        else:  # GELU
            s = s.with_feats(torch.nn.functional.gelu(s.feats))
    return s


def encoder(
    model: nn.Module, x: Tensor, active: Tensor, pooling: str = 'batch'
) -> list[tuple[Tensor, Tensor]]:
    """Sparse forward of a ConvNeXt V2 encoder; dense (features, mask) per stage."""
    s = sequence(to_sparse(x, active), model.stem)
    outputs = []
    for stage in model.stages:
        s = sequence(s, stage.downsample)
        for blk in stage.blocks:
            s = block(s, blk, pooling)
        outputs.append(to_dense(s))
    return outputs
