import math

import pytest
import torch
from torch import Tensor

from torchgeo_mmearth.losses import (
    MultiPretextLoss,
    image_cross_entropy,
    image_mse,
    masked_patch_cross_entropy,
    masked_patch_mse,
)
from torchgeo_mmearth.modalities import Kind, Level, PretextTask, default_pretext_tasks

TASKS = default_pretext_tasks()
NDVI = PretextTask('ndvi', Level.PIXEL, Kind.CONTINUOUS, 1)
BATCH, GRID, PATCH = 3, 2, 8
SIZE = GRID * PATCH


def make_batch(
    seed: int = 0, tasks: tuple[PretextTask, ...] = TASKS
) -> dict[str, Tensor]:
    """A batch as the datamodule gives it, with some no-data."""
    generator = torch.Generator().manual_seed(seed)
    batch: dict[str, Tensor] = {}
    for task in tasks:
        if task.level is Level.PIXEL and task.kind is Kind.CONTINUOUS:
            shape: tuple[int, ...] = (BATCH, task.channels, SIZE, SIZE)
            batch[task.key] = torch.randn(shape, generator=generator)
        elif task.level is Level.PIXEL:
            shape = (BATCH, 1, SIZE, SIZE)
            batch[task.key] = torch.randint(
                -1, task.channels, shape, generator=generator
            )
        elif task.kind is Kind.CONTINUOUS:
            batch[task.key] = torch.randn(BATCH, task.channels, generator=generator)
        else:
            batch[task.key] = torch.randint(
                0, task.channels, (BATCH,), generator=generator
            )
    if 'image_sentinel1' in batch:
        batch['image_sentinel1'][:, 2:4] = math.nan  # HH/HV missing
        batch['image_sentinel1'][:, 6:] = math.nan
    if 'era5' in batch:
        batch['era5'][0] = math.nan
    if 'biome' in batch:
        batch['biome'][1] = -1
    return batch


def make_predictions(
    seed: int = 0, tasks: tuple[PretextTask, ...] = TASKS, requires_grad: bool = False
) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    predictions = {}
    for task in tasks:
        if task.level is Level.PIXEL:
            shape: tuple[int, ...] = (BATCH, GRID * GRID, PATCH**2 * task.channels)
        else:
            shape = (BATCH, task.channels)
        prediction = torch.randn(shape, generator=generator)
        predictions[task.name] = prediction.requires_grad_(requires_grad)
    return predictions


def make_mask() -> Tensor:
    mask = torch.zeros(BATCH, GRID, GRID, dtype=torch.bool)
    mask[:, 0] = True
    mask[1, 1, 1] = True
    return mask


def test_matches_task_losses_and_formula() -> None:
    loss = MultiPretextLoss(TASKS, PATCH)
    assert loss.weighting is not None
    with torch.no_grad():
        loss.weighting.log_vars.copy_(torch.linspace(-1, 1, 12))
    predictions, batch, mask = make_predictions(), make_batch(), make_mask()
    total, losses, valid = loss(predictions, batch, mask)
    assert list(losses) == list(valid) == [task.name for task in TASKS]

    p, b = predictions, batch
    expected = {
        'sentinel2': masked_patch_mse(
            p['sentinel2'], b['image_sentinel2'], mask, PATCH, norm_pix=True
        ),
        'sentinel1': masked_patch_mse(
            p['sentinel1'], b['image_sentinel1'], mask, PATCH
        ),
        'aster': masked_patch_mse(p['aster'], b['image_aster'], mask, PATCH),
        'canopy_height_eth': masked_patch_mse(
            p['canopy_height_eth'], b['image_canopy_height_eth'], mask, PATCH
        ),
        'dynamic_world': masked_patch_cross_entropy(
            p['dynamic_world'], b['mask_dynamic_world'], mask, PATCH
        ),
        'esa_worldcover': masked_patch_cross_entropy(
            p['esa_worldcover'], b['mask_esa_worldcover'], mask, PATCH
        ),
        'era5': image_mse(p['era5'], b['era5']),
        'lat': image_mse(p['lat'], b['lat']),
        'lon': image_mse(p['lon'], b['lon']),
        'month': image_mse(p['month'], b['month']),
        'biome': image_cross_entropy(p['biome'], b['biome']),
        'eco_region': image_cross_entropy(p['eco_region'], b['eco_region']),
    }
    for name, result in expected.items():
        assert torch.equal(losses[name], result.loss), name
        assert torch.equal(valid[name], result.valid_fraction), name
    assert valid['sentinel1'].item() == 0.5
    assert valid['era5'].item() == pytest.approx(2 / 3)
    assert valid['biome'].item() == pytest.approx(2 / 3)
    assert valid['sentinel2'].item() == 1

    s = torch.linspace(-1, 1, 12)
    values = torch.stack([losses[task.name] for task in TASKS])
    formula = (torch.exp(-s) * values + s).sum()
    assert total.item() == pytest.approx(formula.item(), rel=1e-6)


def test_unweighted() -> None:
    loss = MultiPretextLoss(TASKS, PATCH, aggregation='unweighted')
    assert loss.weighting is None
    assert list(loss.state_dict()) == []
    total, losses, _ = loss(make_predictions(), make_batch(), make_mask())
    assert total.item() == pytest.approx(sum(v.item() for v in losses.values()))


def test_uncertainty_state_dict() -> None:
    assert list(MultiPretextLoss(TASKS, PATCH).state_dict()) == ['weighting.log_vars']


def test_all_nodata_batch() -> None:
    loss = MultiPretextLoss(TASKS, PATCH)
    batch = make_batch()
    for value in batch.values():
        value.fill_(math.nan if value.is_floating_point() else -1)
    predictions = make_predictions(requires_grad=True)
    total, losses, valid = loss(predictions, batch, make_mask())
    assert total.item() == 0 and total.requires_grad
    assert all(value.item() == 0 for value in [*losses.values(), *valid.values()])
    total.backward()
    assert loss.weighting is not None and loss.weighting.log_vars.grad is not None
    assert not loss.weighting.log_vars.grad.any()
    for prediction in predictions.values():
        assert prediction.grad is not None and not prediction.grad.any()


def test_all_patches_visible() -> None:
    loss = MultiPretextLoss(TASKS, PATCH)
    mask = torch.zeros(BATCH, GRID, GRID, dtype=torch.bool)
    total, losses, valid = loss(make_predictions(), make_batch(), mask)
    assert loss.weighting is not None
    total.backward()
    grad = loss.weighting.log_vars.grad
    assert grad is not None
    for index, task in enumerate(TASKS):
        # Pixel-level tasks have no target, image-level ones still count.
        if task.level is Level.PIXEL:
            assert losses[task.name].item() == valid[task.name].item() == 0
            assert grad[index].item() == 0
        else:
            assert valid[task.name].item() > 0 and grad[index].item() != 0
    assert torch.isfinite(total)


def test_one_task_without_target_gets_no_weight_gradient() -> None:
    loss = MultiPretextLoss(TASKS, PATCH)
    batch = make_batch()
    batch['image_sentinel1'][:] = math.nan
    total, _, valid = loss(make_predictions(), batch, make_mask())
    total.backward()
    assert loss.weighting is not None and loss.weighting.log_vars.grad is not None
    grad = loss.weighting.log_vars.grad
    index = [task.name for task in TASKS].index('sentinel1')
    assert valid['sentinel1'].item() == 0 and grad[index].item() == 0
    assert (grad[torch.arange(12) != index] != 0).all()


def test_norm_pix_loss_choice() -> None:
    predictions, batch, mask = make_predictions(), make_batch(), make_mask()
    plain = masked_patch_mse(
        predictions['sentinel2'], batch['image_sentinel2'], mask, PATCH
    )
    normalised = masked_patch_mse(
        predictions['sentinel2'], batch['image_sentinel2'], mask, PATCH, norm_pix=True
    )
    assert plain.loss != normalised.loss
    _, losses, _ = MultiPretextLoss(TASKS, PATCH, norm_pix_loss=())(
        predictions, batch, mask
    )
    assert torch.equal(losses['sentinel2'], plain.loss)
    _, losses, _ = MultiPretextLoss(TASKS, PATCH, norm_pix_loss=['aster'])(
        predictions, batch, mask
    )
    assert torch.equal(losses['sentinel2'], plain.loss)
    aster = masked_patch_mse(
        predictions['aster'], batch['image_aster'], mask, PATCH, norm_pix=True
    )
    assert torch.equal(losses['aster'], aster.loss)


def test_user_task_and_subset() -> None:
    tasks = (NDVI, TASKS[4], TASKS[8])  # ndvi, dynamic_world, biome: no sentinel2
    loss = MultiPretextLoss(tasks, PATCH)
    assert loss.norm_pix_loss == frozenset()
    batch = make_batch(tasks=tasks)
    assert 'image_ndvi' in batch
    total, losses, _ = loss(make_predictions(tasks=tasks), batch, make_mask())
    assert list(losses) == ['ndvi', 'dynamic_world', 'biome']
    assert torch.isfinite(total)


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match='aggregation'):
        MultiPretextLoss(TASKS, PATCH, aggregation='mean')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='norm_pix_loss'):
        MultiPretextLoss(TASKS, PATCH, norm_pix_loss=['biome'])
    with pytest.raises(ValueError, match='norm_pix_loss'):
        MultiPretextLoss(TASKS, PATCH, norm_pix_loss=['sentinel3'])
    with pytest.raises(TypeError, match='norm_pix_loss'):
        MultiPretextLoss(TASKS, PATCH, norm_pix_loss='sentinel2')
    with pytest.raises(ValueError, match='duplicate'):
        MultiPretextLoss((NDVI, NDVI), PATCH)
    with pytest.raises(ValueError, match='at least one'):
        MultiPretextLoss((), PATCH)
    with pytest.raises(ValueError, match='patch_size'):
        MultiPretextLoss(TASKS, 0)


def test_bad_batch() -> None:
    loss = MultiPretextLoss(TASKS, PATCH)
    predictions, batch, mask = make_predictions(), make_batch(), make_mask()
    del batch['image_sentinel1']
    with pytest.raises(ValueError, match="'image_sentinel1'"):
        loss(predictions, batch, mask)
    del predictions['era5']
    with pytest.raises(ValueError, match="predictions has no entry for task 'era5'"):
        loss(predictions, make_batch(), mask)
    batch = make_batch()
    batch['image_sentinel2'] = batch['image_sentinel2'][:, :3]
    with pytest.raises(ValueError, match=r"'sentinel2'.*12"):
        loss(make_predictions(), batch, mask)
    batch = make_batch()
    batch['lat'] = batch['lat'][:, :1]
    with pytest.raises(ValueError, match="'lat'"):
        loss(make_predictions(), batch, mask)


def test_patch_size_mismatch() -> None:
    # Predictions for patch size 8 on a 2 x 2 grid, loss configured for 16:
    # 32 px targets give the 2 x 2 grid, but the prediction width is wrong.
    loss = MultiPretextLoss((NDVI, TASKS[4]), 16)
    predictions = make_predictions(tasks=(NDVI, TASKS[4]))
    batch = {
        'image_ndvi': torch.randn(BATCH, 1, 32, 32),
        'mask_dynamic_world': torch.zeros(BATCH, 1, 32, 32, dtype=torch.long),
    }
    with pytest.raises(ValueError, match=r"'ndvi'.*patch_size=16"):
        loss(predictions, batch, make_mask())
    with pytest.raises(ValueError, match=r"'dynamic_world'.*patch_size=16"):
        MultiPretextLoss((TASKS[4],), 16)(predictions, batch, make_mask())
