"""L_M is a true Jensen–Shannon divergence; L = λm·L_M + λc·L_C."""

import math

import pytest
import torch

from ucrn.losses import jensen_shannon, multimodal_js, task_loss, ucrn_loss


def _random(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_js_is_symmetric():
    a, b = _random(16, 30, seed=1), _random(16, 30, seed=2)
    assert torch.allclose(jensen_shannon(a, b), jensen_shannon(b, a), atol=1e-7)


def test_js_is_non_negative_and_at_most_ln2():
    for scale in (0.1, 1.0, 10.0, 1000.0):
        js = jensen_shannon(_random(64, 30, seed=3, scale=scale), _random(64, 30, seed=4,
                                                                          scale=scale))
        assert (js >= -1e-7).all()
        assert (js <= math.log(2) + 1e-6).all()


def test_js_reaches_ln2_for_disjoint_distributions():
    a = torch.tensor([[1e4, 0.0]])
    b = torch.tensor([[0.0, 1e4]])
    assert jensen_shannon(a, b).item() == pytest.approx(math.log(2), abs=1e-6)


def test_js_is_zero_for_identical_inputs_and_shift_invariant():
    a = _random(8, 30, seed=5)
    assert torch.allclose(jensen_shannon(a, a), torch.zeros(8), atol=1e-7)
    # Softmax ignores a constant shift, so the divergence does too.
    assert torch.allclose(jensen_shannon(a, a + 3.0), torch.zeros(8), atol=1e-6)


def test_js_uses_the_softmax_of_the_features():
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[math.log(3.0), 0.0]])  # softmax: (0.5, 0.5) vs (0.75, 0.25)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.75, 0.25])
    m = (p + q) / 2
    expected = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    assert jensen_shannon(a, b).item() == pytest.approx(expected.item(), abs=1e-7)


def test_js_gradients_stay_finite_for_extreme_inputs():
    a = torch.tensor([[1e6, -1e6, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[-1e6, 1e6, 0.0], [1e-30, 0.0, 0.0]], requires_grad=True)
    jensen_shannon(a, b).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_multimodal_js_sums_every_pair_of_present_modalities():
    x = {m: _random(4, 6, seed=i) for i, m in enumerate("lav")}
    pairs = [("l", "a"), ("a", "v"), ("v", "l")]  # eq. (8)
    expected = sum(jensen_shannon(x[p], x[q]).mean() for p, q in pairs)
    assert multimodal_js(x).item() == pytest.approx(expected.item(), abs=1e-7)
    two = {"l": x["l"], "v": x["v"]}
    assert multimodal_js(two).item() == pytest.approx(
        jensen_shannon(x["l"], x["v"]).mean().item(), abs=1e-7)
    assert multimodal_js({"a": x["a"]}).item() == 0.0


def test_total_loss_weights_both_terms():
    prediction, target = torch.tensor([0.5, -1.0]), torch.tensor([1.0, 1.0])
    unimodal = {"l": _random(2, 5, seed=1), "a": _random(2, 5, seed=2)}
    loss = ucrn_loss(prediction, target, unimodal, "regression", lambda_m=0.3, lambda_c=2.0)
    assert loss.task.item() == pytest.approx(1.25)  # L1: (0.5 + 2.0) / 2
    assert loss.total.item() == pytest.approx(0.3 * loss.js.item() + 2.0 * 1.25, rel=1e-6)


def test_task_losses_match_their_definitions():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    classes = torch.tensor([0, 1])
    assert task_loss(logits, classes, "binary").item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, classes).item())
    emotion_logits, present = torch.zeros(2, 6), torch.ones(2, 6)
    assert task_loss(emotion_logits, present, "emotions").item() == pytest.approx(math.log(2))
