"""The UCRN model: shapes, any modality subset, padding, ablations, parameter counts."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from ucrn.config import ModelConfig
from ucrn.errors import UcrnError
from ucrn.model import (
    CPU_ATTENTION_WIDTH,
    UCRN,
    ByteDropout,
    count_parameters,
    key_padding_mask,
    scaled_attention,
)

DIMS = {"l": 300, "a": 5, "v": 20}


def _inputs(batch=4, steps=12, seed=0, dims=DIMS):
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(batch, steps, d, generator=generator) for m, d in dims.items()}
    lengths = {m: torch.tensor([steps, steps - 3, 5, 1][:batch]) for m in dims}
    return features, lengths


def _model(**overrides):
    torch.manual_seed(0)
    overrides.setdefault("input_dims", dict(DIMS))
    return UCRN(ModelConfig(**overrides)).eval()


@pytest.mark.parametrize("task, shape", [
    ("regression", (4,)), ("binary", (4, 2)), ("seven_class", (4, 7)), ("emotions", (4, 6)),
])
def test_each_task_has_its_output_shape(task, shape):
    features, lengths = _inputs()
    assert _model(task=task)(features, lengths).prediction.shape == shape


def test_the_same_weights_take_every_non_empty_modality_subset():
    model = _model()
    features, lengths = _inputs()
    outputs = {}
    for size in (1, 2, 3):
        for subset in itertools.combinations("lav", size):
            out = model({m: features[m] for m in subset}, {m: lengths[m] for m in subset})
            assert out.prediction.shape == (4,)
            assert set(out.unimodal) == set(subset)
            outputs[subset] = out.prediction
    assert len(outputs) == 7
    assert not torch.allclose(outputs[("l",)], outputs[("l", "a", "v")])


def test_unknown_or_no_modality_is_refused():
    model = _model(modalities=("l", "a"), input_dims={"l": 300, "a": 5})
    features, _ = _inputs()
    with pytest.raises(ValueError):
        model({"v": features["v"]})
    with pytest.raises(ValueError):
        model({})


def test_padding_beyond_each_length_does_not_change_the_output():
    model = _model()
    features, lengths = _inputs()
    spoiled = {m: x.clone() for m, x in features.items()}
    for m in spoiled:
        for row, length in enumerate(lengths[m].tolist()):
            spoiled[m][row, length:] = 1e3
    assert torch.allclose(model(features, lengths).prediction,
                          model(spoiled, lengths).prediction, atol=1e-5)


def test_urm_keeps_the_last_valid_step_as_if_every_step_were_computed():
    model = _model()
    features, lengths = _inputs()
    urm = model.urms["l"]
    x, n = features["l"], lengths["l"]
    hidden = urm.projection(x) + urm._positions(x.shape[1], x.device)
    mask = key_padding_mask(n, x.shape[1])
    for layer in urm.layers:
        hidden = layer(hidden, mask)  # every step, every layer
    expected = hidden[torch.arange(4), n - 1]  # eq. (6)
    assert torch.allclose(urm(x, n), expected, atol=1e-5)


def test_urms_run_together_give_what_each_gives_alone():
    # Modalities stored with the same steps share one stacked computation; each must see
    # only its own weights, inputs and padding (here different lengths per modality).
    model = _model()
    features, _ = _inputs()
    lengths = {"l": torch.tensor([12, 9, 5, 1]), "a": torch.tensor([3, 12, 7, 2]), "v": None}
    together = model.refine_unimodal(features, lengths, ["l", "a", "v"])
    for m, urm in model.urms.items():
        assert torch.allclose(together[m], urm(features[m], lengths[m]), atol=1e-5), m
    unaligned = dict(features, v=torch.randn(4, 20, 20))  # a group of two and one alone
    apart = model.refine_unimodal(unaligned, lengths, ["l", "a", "v"])
    assert torch.allclose(apart["v"], model.urms["v"](unaligned["v"], None), atol=1e-5)
    assert torch.allclose(apart["l"], together["l"], atol=1e-6)


def test_long_sequences_run_in_halves_sorted_by_length_with_the_same_result(monkeypatch):
    import ucrn.model

    model = _model()
    features, _ = _inputs(batch=4, steps=12)
    lengths = {m: torch.tensor([3, 12, 1, 7]) for m in features}  # unsorted on purpose
    whole = model(features, lengths)
    monkeypatch.setattr(ucrn.model, "LONG_STEPS", 4)  # 12 steps now count as long
    halves = model(features, lengths)
    assert torch.allclose(halves.prediction, whole.prediction, atol=1e-5)
    for m in features:
        assert torch.allclose(halves.unimodal[m], whole.unimodal[m], atol=1e-5)


def test_without_lengths_the_last_step_is_used():
    model = _model()
    features, _ = _inputs()
    full = {m: torch.full((4,), 12) for m in features}
    assert torch.allclose(model(features).prediction, model(features, full).prediction,
                          atol=1e-6)


def test_ablations_remove_their_modules_and_still_run():
    full = count_parameters(_model())
    features, lengths = _inputs()
    for switch in ("use_urm", "use_sqil", "use_crm"):
        model = _model(**{switch: False})
        assert count_parameters(model) < full, switch
        assert torch.isfinite(model(features, lengths).prediction).all()


def test_parameter_counts_of_the_default_model():
    # Reported in the README next to the paper's Table 7 (422,401 / 211,681).
    assert count_parameters(_model()) == 201_241
    bimodal = UCRN(ModelConfig(modalities=("l", "a"), input_dims={"l": 300, "a": 5}))
    assert count_parameters(bimodal) == 153_961


def test_heads_must_divide_the_width():
    with pytest.raises(UcrnError, match="does not divide"):
        UCRN(ModelConfig(width=32, heads=3))


def test_gradients_reach_every_parameter_of_the_trimodal_model():
    model = _model().train()
    features, lengths = _inputs()
    out = model(features, lengths)
    (out.prediction.sum() + sum(u.sum() for u in out.unimodal.values())).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_dropout_drops_about_p_and_keeps_the_expectation():
    torch.manual_seed(0)
    dropout = ByteDropout(0.1).train()
    out = dropout(torch.ones(200_000))
    assert (out == 0).float().mean().item() == pytest.approx(26 / 256, abs=0.005)
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(dropout.eval()(torch.ones(10)), torch.ones(10))


def test_dropout_drops_exactly_the_elements_whose_random_byte_is_below_its_threshold():
    x = torch.randn(3, 7, 5)
    torch.manual_seed(1)
    out = ByteDropout(0.1).train()(x)
    torch.manual_seed(1)
    draws = torch.randint(-2**63, 2**63 - 1, ((x.numel() + 7) // 8,), dtype=torch.int64)
    kept = draws.view(torch.uint8)[:x.numel()].view(x.shape) >= 26
    assert torch.equal(out, torch.where(kept, x * (256 / 230), torch.zeros(())))


def test_a_model_scored_before_it_trains_can_train():
    # what the model keeps between calls (the modality index) is made for both
    model = _model()
    features, lengths = _inputs()
    with torch.inference_mode():
        model(features, lengths)
    model(features, lengths).prediction.sum().backward()
    assert model.crm.modality_embedding.grad is not None


@pytest.mark.parametrize("head_width", [8, 10, 12, 16, 24])
def test_attention_on_heads_narrower_than_the_cpu_kernels_width_is_unchanged(head_width):
    """A head narrower than 16 is zero-padded for the CPU's kernel: the same output and the
    same gradients as attention at its own width, padded keys masked as before."""
    generator = torch.Generator().manual_seed(head_width)
    inputs = [torch.randn(4, 3, 7, head_width, generator=generator, requires_grad=True)
              for _ in range(3)]
    mask = key_padding_mask(torch.tensor([7, 5, 3, 1]), 7)
    padded = scaled_attention(*inputs, mask, 0.0, padded_width=CPU_ATTENTION_WIDTH)
    padded_grads = torch.autograd.grad(padded.square().sum(), inputs)
    plain = F.scaled_dot_product_attention(*inputs, attn_mask=mask)
    plain_grads = torch.autograd.grad(plain.square().sum(), inputs)
    assert padded.shape == plain.shape
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-6)
    for got, want in zip(padded_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
