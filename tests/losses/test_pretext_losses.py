import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from torchgeo_mmearth.losses import (
    image_cross_entropy,
    image_mse,
    masked_patch_cross_entropy,
    masked_patch_mse,
    patchify,
)

NAN = float('nan')


def random_mask(batch: int, rows: int, cols: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, rows, cols, generator=generator) < 0.6
    mask[:, 0, 0] = True
    mask[:, -1, -1] = False
    return mask


def assert_zero_with_graph(loss: Tensor, pred: Tensor) -> None:
    assert loss.item() == 0
    assert loss.requires_grad
    loss.backward()
    assert pred.grad is not None
    assert torch.equal(pred.grad, torch.zeros_like(pred))


class TestMaskedPatchMSE:
    def test_closed_form(self) -> None:
        # Patch size 1, two channels, a 2 x 2 grid; patches numbered row-major.
        target = torch.tensor(
            [[[[1.0, 5.0], [3.0, NAN]], [[2.0, 5.0], [NAN, NAN]]]]
        )  # patches: [1, 2], [5, 5], [3, nan], [nan, nan]
        pred = torch.tensor([[[0.0, 0.0], [9.0, 9.0], [1.0, 0.0], [7.0, 7.0]]])
        mask = torch.tensor([[[True, False], [True, True]]])
        result = masked_patch_mse(pred, target, mask, 1)
        # Patch 0: (1 + 4) / 2; patch 2: (3 - 1)^2 / 1; patch 3 has no valid entry.
        assert result.loss.item() == pytest.approx((2.5 + 4.0) / 2)
        assert result.valid_fraction.item() == pytest.approx(3 / 6)

    def test_norm_pix_closed_form(self) -> None:
        target = torch.tensor([[[[1.0, 2.0], [3.0, NAN]]]])  # one 2 x 2 patch
        pred = torch.zeros(1, 1, 4)
        mask = torch.ones(1, 1, 1, dtype=torch.bool)
        result = masked_patch_mse(pred, target, mask, 2, norm_pix=True)
        # Mean 2, unbiased variance 1: normalised [-1, 0, 1] / sqrt(1 + 1e-6).
        assert result.loss.item() == pytest.approx(2 / (1 + 1e-6) / 3)

    def test_norm_pix_single_valid_entry(self) -> None:
        target = torch.tensor([[[[4.0, NAN], [NAN, NAN]]]])
        pred = torch.full((1, 1, 4), 0.5)
        result = masked_patch_mse(pred, target, torch.ones(1, 1, 1), 2, norm_pix=True)
        assert result.loss.item() == pytest.approx(0.25)  # normalised target is 0

    def test_norm_pix_normalises_each_patch(self) -> None:
        # A target that is an affine function of a unit pattern in every patch
        # normalises to the same pattern: zero loss when predicting it.
        torch.manual_seed(0)
        pattern = torch.randn(1, 2, 4, 4)
        unit = patchify(pattern, 4)
        unit = (unit - unit.mean(-1, keepdim=True)) / unit.std(-1, keepdim=True)
        grid = unit.reshape(1, 1, 32).expand(3, 4, 32)  # 3 samples, 2 x 2 grid
        target = torch.cat(
            [torch.cat([pattern * 3 + 1, pattern * 0.5 - 2], 3)] * 2, 2
        ).expand(3, 2, 8, 8)
        result = masked_patch_mse(grid, target, torch.ones(3, 2, 2), 4, norm_pix=True)
        assert result.loss.item() == pytest.approx(0, abs=1e-8)

    def test_matches_reference_without_nodata(self) -> None:
        torch.manual_seed(0)
        target = torch.randn(2, 3, 16, 24)
        pred = torch.randn(2, 6, 192)
        mask = random_mask(2, 2, 3)
        for norm_pix in (False, True):
            patches = patchify(target, 8)
            if norm_pix:
                mean = patches.mean(dim=-1, keepdim=True)
                var = patches.var(dim=-1, keepdim=True)
                patches = (patches - mean) / (var + 1e-6) ** 0.5
            per_patch = ((pred - patches) ** 2).mean(dim=-1)
            expected = (per_patch * mask.flatten(1)).sum() / mask.sum()
            loss = masked_patch_mse(pred, target, mask, 8, norm_pix=norm_pix).loss
            assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    def test_all_masked_equals_mse(self) -> None:
        torch.manual_seed(0)
        pred_map, target = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
        loss = masked_patch_mse(patchify(pred_map, 8), target, torch.ones(2, 2, 2), 8)
        assert loss.loss.item() == pytest.approx(F.mse_loss(pred_map, target).item())

    @pytest.mark.parametrize('norm_pix', [False, True])
    def test_invariant_to_visible_patches(self, norm_pix: bool) -> None:
        torch.manual_seed(0)
        target = torch.randn(2, 3, 16, 16)
        target[0, 1, :4] = NAN
        mask = random_mask(2, 2, 2)
        pred = torch.randn(2, 4, 192, requires_grad=True)
        loss = masked_patch_mse(pred, target, mask, 8, norm_pix=norm_pix).loss
        loss.backward()
        assert pred.grad is not None
        visible = ~mask.flatten(1)
        assert torch.equal(pred.grad[visible], torch.zeros_like(pred.grad[visible]))
        assert pred.grad[~visible].abs().sum() > 0
        # No-data entries get no gradient either.
        nodata = ~torch.isfinite(patchify(target, 8))
        assert nodata.any() and not pred.grad[nodata].any()
        changed = pred.detach().clone()
        changed[visible] = torch.randn_like(changed[visible]) * 100
        again = masked_patch_mse(changed, target, mask, 8, norm_pix=norm_pix).loss
        assert torch.equal(again, loss.detach())

    @pytest.mark.parametrize('case', ['nan', 'inf', 'visible'])
    def test_zero_without_valid_target(self, case: str) -> None:
        target = torch.randn(2, 2, 16, 16)
        mask = torch.ones(2, 2, 2, dtype=torch.bool)
        if case == 'nan':
            target[:] = NAN
        elif case == 'inf':
            target[:] = -math.inf
        else:
            mask[:] = False
        pred = torch.randn(2, 4, 128, requires_grad=True)
        result = masked_patch_mse(pred, target, mask, 8, norm_pix=True)
        assert result.valid_fraction.item() == 0
        assert_zero_with_graph(result.loss, pred)

    def test_bad_input(self) -> None:
        target, mask = torch.randn(2, 3, 16, 16), torch.ones(2, 2, 2)
        with pytest.raises(ValueError, match='patch_size=8'):
            masked_patch_mse(torch.randn(2, 4, 48), target, mask, 8)
        with pytest.raises(ValueError, match='patch_size=16'):
            # Predictions made for patch size 8.
            masked_patch_mse(torch.randn(2, 4, 192), target, torch.ones(2, 1, 1), 16)
        with pytest.raises(ValueError, match='patch_size=5'):
            masked_patch_mse(torch.randn(2, 4, 75), target, mask, 5)
        with pytest.raises(ValueError, match='mask'):
            masked_patch_mse(torch.randn(2, 4, 192), target, torch.ones(2, 3, 3), 8)
        with pytest.raises(ValueError, match='target'):
            masked_patch_mse(torch.randn(2, 4, 192), target[0], mask, 8)


class TestMaskedPatchCrossEntropy:
    def test_closed_form(self) -> None:
        target = torch.tensor([[[[2, -1], [1, 0]]]])  # patch size 1, 2 x 2 grid
        mask = torch.tensor([[[True, True], [True, False]]])
        pred = torch.tensor(
            [
                [
                    [0.0, 0.0, math.log(2)],  # p(2) = 0.5
                    [5.0, 0.0, 0.0],  # ignored label
                    [0.0, math.log(3), 0.0],  # p(1) = 0.6
                    [9.0, -9.0, 0.0],  # visible
                ]
            ]
        )
        result = masked_patch_cross_entropy(pred, target, mask, 1)
        expected = (-math.log(0.5) - math.log(0.6)) / 2
        assert result.loss.item() == pytest.approx(expected)
        assert result.valid_fraction.item() == pytest.approx(2 / 3)

    def test_layout_matches_patchified_logits(self) -> None:
        # Logits laid out as patchify lays out a K-channel map.
        torch.manual_seed(0)
        logits = torch.randn(2, 5, 16, 24)
        target = torch.randint(-1, 5, (2, 1, 16, 24))
        mask = torch.ones(2, 2, 3, dtype=torch.bool)
        loss = masked_patch_cross_entropy(patchify(logits, 8), target, mask, 8, 5).loss
        expected = F.cross_entropy(logits, target[:, 0], ignore_index=-1)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        # (B, H, W) targets work too.
        again = masked_patch_cross_entropy(patchify(logits, 8), target[:, 0], mask, 8)
        assert torch.equal(again.loss, loss)

    def test_invariant_to_visible_patches(self) -> None:
        torch.manual_seed(0)
        target = torch.randint(-1, 9, (2, 1, 16, 16))
        mask = random_mask(2, 2, 2)
        pred = torch.randn(2, 4, 64 * 9, requires_grad=True)
        loss = masked_patch_cross_entropy(pred, target, mask, 8).loss
        loss.backward()
        assert pred.grad is not None
        visible = ~mask.flatten(1)
        assert torch.equal(pred.grad[visible], torch.zeros_like(pred.grad[visible]))
        ignored = (patchify(target, 8) == -1).repeat_interleave(9, dim=-1)
        assert ignored.any() and not pred.grad[ignored].any()
        changed = pred.detach().clone()
        changed[visible] = torch.randn_like(changed[visible]) * 100
        again = masked_patch_cross_entropy(changed, target, mask, 8).loss
        assert torch.equal(again, loss.detach())

    @pytest.mark.parametrize('case', ['ignored', 'visible'])
    def test_zero_without_valid_target(self, case: str) -> None:
        target = torch.randint(0, 9, (2, 1, 16, 16))
        mask = torch.ones(2, 2, 2, dtype=torch.bool)
        if case == 'ignored':
            target[:] = -1
        else:
            mask[:] = False
        pred = torch.randn(2, 4, 64 * 9, requires_grad=True)
        result = masked_patch_cross_entropy(pred, target, mask, 8, 9)
        assert result.valid_fraction.item() == 0
        assert_zero_with_graph(result.loss, pred)

    def test_bad_input(self) -> None:
        target, mask = torch.randint(0, 9, (2, 1, 16, 16)), torch.ones(2, 2, 2)
        with pytest.raises(ValueError, match='integer'):
            masked_patch_cross_entropy(torch.randn(2, 4, 576), target.float(), mask, 8)
        with pytest.raises(ValueError, match='patch_size=8'):
            masked_patch_cross_entropy(torch.randn(2, 4, 256 * 9), target, mask, 8, 9)
        with pytest.raises(ValueError, match='patch_size=8'):
            masked_patch_cross_entropy(torch.randn(2, 4, 100), target, mask, 8)
        with pytest.raises(ValueError, match=r'\(B, 1, H, W\)'):
            masked_patch_cross_entropy(
                torch.randn(2, 4, 576), target.expand(2, 2, 16, 16), mask, 8
            )
        with pytest.raises(ValueError, match='mask'):
            masked_patch_cross_entropy(torch.randn(2, 4, 576), target, mask[0], 8)


class TestImageLosses:
    def test_mse_closed_form(self) -> None:
        pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        target = torch.tensor([[0.0, NAN], [math.inf, 6.0]])
        result = image_mse(pred, target)
        assert result.loss.item() == pytest.approx((1 + 4) / 2)
        assert result.valid_fraction.item() == 0.5

    def test_mse_nodata_gets_no_gradient(self) -> None:
        pred = torch.randn(2, 2, requires_grad=True)
        image_mse(pred, torch.tensor([[0.0, NAN], [1.0, NAN]])).loss.backward()
        assert pred.grad is not None and not pred.grad[:, 1].any()

    def test_cross_entropy_closed_form(self) -> None:
        pred = torch.tensor([[0.0, 0.0, math.log(2)], [5.0, 0, 0], [1.0, 2.0, 3.0]])
        target = torch.tensor([2, -1, 0])
        result = image_cross_entropy(pred, target)
        third = math.log(math.e + math.e**2 + math.e**3) - 1
        assert result.loss.item() == pytest.approx((math.log(2) + third) / 2)
        assert result.valid_fraction.item() == pytest.approx(2 / 3)
        column = image_cross_entropy(pred, target.unsqueeze(1))
        assert torch.equal(column.loss, result.loss)

    def test_zero_without_valid_target(self) -> None:
        pred = torch.randn(3, 4, requires_grad=True)
        result = image_mse(pred, torch.full((3, 4), NAN))
        assert result.valid_fraction.item() == 0
        assert_zero_with_graph(result.loss, pred)
        pred = torch.randn(3, 4, requires_grad=True)
        result = image_cross_entropy(pred, torch.full((3,), -1))
        assert result.valid_fraction.item() == 0
        assert_zero_with_graph(result.loss, pred)

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError, match=r'\(B, C\)'):
            image_mse(torch.randn(2, 3), torch.randn(2, 2))
        with pytest.raises(ValueError, match='integer'):
            image_cross_entropy(torch.randn(2, 3), torch.zeros(2, 3))
        with pytest.raises(ValueError, match=r'\(B, K\)'):
            image_cross_entropy(torch.randn(2, 3), torch.zeros(3, dtype=torch.long))
