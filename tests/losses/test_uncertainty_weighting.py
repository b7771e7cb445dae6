import math

import pytest
import torch

from torchgeo_mmearth.losses import UncertaintyWeighting


def test_initial_state() -> None:
    weighting = UncertaintyWeighting(12)
    assert weighting.log_vars.shape == (12,)
    assert not weighting.log_vars.any()
    assert list(weighting.state_dict()) == ['log_vars']
    # Initially the total is the plain sum.
    losses = torch.rand(12)
    assert weighting(losses).item() == pytest.approx(losses.sum().item())


def test_value_and_gradients() -> None:
    weighting = UncertaintyWeighting(3)
    s = [0.5, -1.0, 2.0]
    values = [1.0, 2.0, 3.0]
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor(s))
    losses = torch.tensor(values, requires_grad=True)
    total = weighting(losses)
    expected = sum(
        math.exp(-s_t) * l_t + s_t for s_t, l_t in zip(s, values, strict=True)
    )
    assert total.item() == pytest.approx(expected)
    total.backward()
    assert weighting.log_vars.grad is not None and losses.grad is not None
    # d/ds_t = 1 - exp(-s_t) L_t and d/dL_t = exp(-s_t).
    grad_s = [1 - math.exp(-s_t) * l_t for s_t, l_t in zip(s, values, strict=True)]
    assert weighting.log_vars.grad.tolist() == pytest.approx(grad_s)
    assert losses.grad.tolist() == pytest.approx([math.exp(-s_t) for s_t in s])


def test_sequence_of_scalars() -> None:
    weighting = UncertaintyWeighting(2)
    losses = [torch.tensor(1.5), torch.tensor(0.5)]
    assert weighting(losses).item() == pytest.approx(2.0)
    assert weighting.weighted_losses(losses).tolist() == pytest.approx([1.5, 0.5])


@pytest.mark.parametrize('explicit', [True, False])
def test_task_without_target(explicit: bool) -> None:
    weighting = UncertaintyWeighting(3)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.3, 0.7, -0.2]))
    losses = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    has_target = torch.tensor([True, False, True]) if explicit else None
    terms = weighting.weighted_losses(losses, has_target)
    assert terms[1].item() == 0
    total = terms.sum()
    assert total.item() == pytest.approx(
        math.exp(-0.3) * 1 + 0.3 + math.exp(0.2) * 2 - 0.2
    )
    total.backward()
    assert weighting.log_vars.grad is not None
    assert weighting.log_vars.grad[1].item() == 0
    assert weighting.log_vars.grad[0].item() != 0


def test_no_task_has_a_target() -> None:
    weighting = UncertaintyWeighting(2)
    total = weighting(torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    assert total.item() == 0
    total.backward()
    assert weighting.log_vars.grad is not None
    assert not weighting.log_vars.grad.any()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match='num_tasks'):
        UncertaintyWeighting(0)
    weighting = UncertaintyWeighting(3)
    with pytest.raises(ValueError, match='num_tasks=3'):
        weighting(torch.zeros(2))
    with pytest.raises(ValueError, match='num_tasks=3'):
        weighting([])
    with pytest.raises(ValueError, match='has_target'):
        weighting(torch.zeros(3), torch.ones(2, dtype=torch.bool))
