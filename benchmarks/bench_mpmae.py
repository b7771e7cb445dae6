"""Compute cost of MP-MAE pretraining steps, all figures from one run.

Times one training step (forward + backward) on random input of the MMEarth
ConvNeXt V2 encoder (https://arxiv.org/abs/2405.02771,
https://arxiv.org/abs/2301.00808) and of the whole MP-MAE, for

* ``timm convnextv2 supervised``: timm's own ``convnextv2_<size>`` with a
  classifier and cross-entropy (a plain supervised step on the same input);
* ``dense``: the plain unmasked encoder, ``model.forward_features`` (mean-square
  loss), on NCHW input and on channels_last input;
* ``masked dense``: :func:`masked_forward` with ``path='dense'``;
* ``masked packed``: :func:`masked_forward` with ``path='packed'``;
* ``masked auto``: :func:`masked_forward` with the default ``path='auto'``;
* ``MP-MAE S2 only``: :class:`MPMAE` with the Sentinel-2 task alone (plain FCMAE);
* ``MP-MAE 12 tasks``: :class:`MPMAE` with all 12 pretext tasks, shared decoder;

interleaved round by round so that load changes hit every variant alike. It
reports medians, the median per-round ratio to the NCHW ``dense`` step and to
``MP-MAE S2 only``, samples/s, and the achieved GFLOP/s against a large float32
matmul measured in the same run. FLOPs
are the matmul and convolution FLOPs of one forward pass as counted by
``FlopCounterMode`` (the FLOPs actually executed: the packed path multiplies
fewer rows), times 3 for forward + backward; ``FlopCounterMode``'s own count of
``convolution_backward`` is not used, it ignores the groups of depthwise
convolutions and overcounts them 40-fold. Run by hand::

    python benchmarks/bench_mpmae.py --threads 1
    python benchmarks/bench_mpmae.py --threads 2

On a shared machine, one thread gives the steadiest numbers: with two, a busy
core stalls every OpenMP barrier.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from torchgeo_mmearth.modalities import PretextTask, default_pretext_tasks
from torchgeo_mmearth.models import (
    MPMAE,
    masked_forward,
    random_patch_mask,
    upsample_mask,
)


def _pretext_batch(batch_size: int, size: int) -> dict[str, Tensor]:
    """Random normalised targets of every MP-MAE pretext task."""
    batch: dict[str, Tensor] = {}
    for task in default_pretext_tasks():
        if task.kind == 'categorical':
            shape = (
                (batch_size, 1, size, size) if task.level == 'pixel' else (batch_size,)
            )
            batch[task.key] = torch.randint(0, task.channels, shape)
        elif task.level == 'pixel':
            batch[task.key] = torch.randn(batch_size, task.channels, size, size)
        else:
            batch[task.key] = torch.randn(batch_size, task.channels)
    return batch


def _step(model: torch.nn.Module, forward: Callable[[], Tensor]) -> None:
    model.zero_grad(set_to_none=True)
    forward().float().square().mean().backward()


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _step_flops(forward: Callable[[], Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        forward()
    return 3 * counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', default='atto')
    parser.add_argument('--patch-size', type=int, default=8)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--mask-ratio', type=float, default=0.6)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--grn-pooling', default='batch', choices=('batch', 'sample'))
    parser.add_argument('--matmul-size', type=int, default=2048)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = timm.create_model(
        f'mmearth_convnextv2_{args.size}', in_chans=12, patch_size=args.patch_size
    ).train()
    size = 7 * args.patch_size
    x = torch.randn(args.batch_size, 12, size, size)
    patches = random_patch_mask(
        args.batch_size, 7, args.mask_ratio, generator=torch.Generator().manual_seed(0)
    )
    active = ~upsample_mask(patches, args.patch_size)[:, None]

    def masked(path: str) -> Callable[[], Tensor]:
        return lambda: masked_forward(
            model, x, active, grn_pooling=args.grn_pooling, path=path
        )[0]

    batch = _pretext_batch(args.batch_size, size)
    batch['image_sentinel2'] = x
    mpmae_s2 = MPMAE(
        model,
        patch_size=args.patch_size,
        tasks=[PretextTask.from_modality('sentinel2')],
    )
    mpmae_all = MPMAE(model, patch_size=args.patch_size)
    supervised = timm.create_model(
        f'convnextv2_{args.size}', in_chans=12, num_classes=10
    )
    labels = torch.randint(0, 10, (args.batch_size,))

    x_cl = x.contiguous(memory_format=torch.channels_last)
    variants: dict[str, Callable[[], Tensor]] = {
        'timm convnextv2 supervised': lambda: torch.nn.functional.cross_entropy(
            supervised(x), labels
        ),
        'dense (forward_features)': lambda: model.forward_features(x),
        'dense, channels_last': lambda: model.forward_features(x_cl),
        'masked dense': masked('dense'),
        'masked packed': masked('packed'),
        'masked auto': masked('auto'),
        'MP-MAE S2 only': lambda: mpmae_s2(batch, mask=patches).loss,
        'MP-MAE 12 tasks': lambda: mpmae_all(batch, mask=patches).loss,
    }
    modules = torch.nn.ModuleList([supervised, mpmae_s2, mpmae_all])
    steps = {
        name: (lambda f=forward: _step(modules, f))
        for name, forward in variants.items()
    }
    n = args.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)

    def matmul() -> None:
        for _ in range(4):
            a @ b

    for _ in range(args.warmup):
        for step in steps.values():
            step()
        matmul()
    times: dict[str, list[float]] = {name: [] for name in steps}
    matmul_times = []
    for _ in range(args.repeats):
        matmul_times.append(_time(matmul) / 4)
        for name, step in steps.items():
            times[name].append(_time(step))
    flops = {name: _step_flops(forward) for name, forward in variants.items()}

    base = 'dense (forward_features)'
    peak = 2 * n**3 / statistics.median(matmul_times) / 1e9
    print(
        f'{args.size}, {size} px, patch {args.patch_size}, batch {args.batch_size}, '
        f'mask ratio {args.mask_ratio}, GRN pooling {args.grn_pooling}, '
        f'{torch.get_num_threads()} threads, '
        f'{args.repeats} rounds; active pixels {active.float().mean():.3f}'
    )
    print(f'fp32 matmul {n}x{n}: {peak:.1f} GFLOP/s (median)')
    header = (
        f'{"variant":<28} {"median ms":>10} {"samples/s":>10} {"x dense":>8} '
        f'{"x S2 only":>9} {"GFLOP":>7} {"GFLOP/s":>8} {"% matmul":>9}'
    )
    print(header)
    print('-' * len(header))

    def ratio(name: str, reference: str) -> float:
        pairs = zip(times[name], times[reference], strict=True)
        return statistics.median(t / r for t, r in pairs)

    for name, values in times.items():
        median = statistics.median(values)
        gflop = flops[name] / 1e9
        rate = gflop / median
        print(
            f'{name:<28} {median * 1e3:>10.0f} {args.batch_size / median:>10.1f} '
            f'{ratio(name, base):>8.2f} {ratio(name, "MP-MAE S2 only"):>9.2f} '
            f'{gflop:>7.1f} {rate:>8.1f} {100 * rate / peak:>8.1f}%'
        )
    print(
        'x dense / x S2 only: median over rounds of the per-round time ratio; '
        'GFLOP: 3 x the matmul + convolution FLOPs of the forward pass as executed.'
    )


if __name__ == '__main__':
    main()
