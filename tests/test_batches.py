"""In-memory batches, shards, and the perturbations of the robustness tables."""

import numpy as np
import pytest
import torch

from ucrn.data.batches import (
    bernoulli_noise,
    drop_modalities,
    epoch_order,
    iterate_batches,
    mask_modalities,
)
from ucrn.data.layout import Split, load_dataset
from ucrn.errors import UcrnError


def _split(count=10, steps=6):
    generator = torch.Generator().manual_seed(0)
    features = {m: torch.randn(count, steps, d, generator=generator) for m, d in
                (("l", 4), ("a", 3), ("v", 2))}
    lengths = {m: torch.arange(count) % steps + 1 for m in features}
    lengths["l"] = None
    return Split(features, lengths, torch.arange(count, dtype=torch.float32)[:, None],
                 [str(i) for i in range(count)])


def test_batches_cover_every_sample_once_in_the_given_order():
    split = _split()
    order = epoch_order(len(split), shuffle=True, generator=torch.Generator().manual_seed(1))
    seen = [batch.targets for batch in iterate_batches(split, split.labels[:, 0], split.labels,
                                                        batch_size=4, order=order)]
    assert [len(t) for t in seen] == [4, 4, 2]
    assert torch.equal(torch.cat(seen), order.float())


def test_batch_rows_stay_together():
    split = _split()
    batch = next(iterate_batches(split, split.labels[:, 0], split.labels, 3,
                                 order=torch.tensor([7, 2, 5])))
    assert torch.equal(batch.features["a"][1], split.features["a"][2])
    assert torch.equal(batch.lengths["v"], split.lengths["v"][[7, 2, 5]])
    assert batch.lengths["l"] is None


def test_shards_are_equal_and_cover_the_epoch():
    shards = [epoch_order(10, shuffle=True, generator=torch.Generator().manual_seed(3), rank=r,
                          world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set(torch.cat(shards).tolist()) == set(range(10))


def test_masking_zeroes_only_the_named_modality():
    split = _split()
    masked = mask_modalities(split, ["a"])
    assert torch.count_nonzero(masked.features["a"]) == 0
    assert torch.equal(masked.features["l"], split.features["l"])
    assert masked.modalities == ("l", "a", "v")


def test_dropping_removes_the_modality():
    split = drop_modalities(_split(), ["l", "v"])
    assert split.modalities == ("l", "v") and set(split.lengths) == {"l", "v"}
    with pytest.raises(UcrnError, match="at least one"):
        drop_modalities(_split(), [])


def test_perturbing_an_absent_modality_is_refused():
    split = drop_modalities(_split(), ["l"])
    with pytest.raises(UcrnError, match="carries only l"):
        mask_modalities(split, ["a"])


def test_noise_perturbs_about_p_of_the_valid_values_and_never_the_padding():
    split = _split(count=400, steps=20)
    noisy = bernoulli_noise(split, 0.5, ["a"], seed=0)
    changed = noisy.features["a"] != split.features["a"]
    steps = torch.arange(20)
    valid = (steps < split.lengths["a"].unsqueeze(1)).unsqueeze(-1).expand_as(changed)
    assert not changed[~valid].any()
    assert changed[valid].float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(noisy.features["l"], split.features["l"])


def test_noise_has_the_features_standard_deviation():
    split = _split(count=2000, steps=5)
    split.lengths["v"] = None
    split.features["v"] = split.features["v"] * torch.tensor([1.0, 10.0])
    noisy = bernoulli_noise(split, 1.0, ["v"], seed=0)
    added = (noisy.features["v"] - split.features["v"]).reshape(-1, 2)
    ratio = added.std(dim=0) / split.features["v"].reshape(-1, 2).std(dim=0)
    assert np.allclose(ratio.numpy(), 1.0, atol=0.05)


def test_noise_is_reproducible_from_its_seed_and_zero_p_changes_nothing():
    split = _split()
    assert torch.equal(bernoulli_noise(split, 0.5, seed=4).features["l"],
                       bernoulli_noise(split, 0.5, seed=4).features["l"])
    assert not torch.equal(bernoulli_noise(split, 0.5, seed=4).features["l"],
                           bernoulli_noise(split, 0.5, seed=5).features["l"])
    assert torch.equal(bernoulli_noise(split, 0.0).features["v"], split.features["v"])
    with pytest.raises(UcrnError, match="must be in"):
        bernoulli_noise(split, 1.5)


def test_a_real_file_batches_without_python_per_sample(tiny_mosi):
    train = load_dataset(tiny_mosi).split("train")
    batches = list(iterate_batches(train, train.labels[:, 0], train.labels, 16))
    assert sum(len(b.targets) for b in batches) == len(train)


def test_feature_moments_are_taken_once_for_the_same_unchanged_tensors(monkeypatch):
    import ucrn.data.batches as batches

    split = _split()
    passes = []
    real = batches._moments
    monkeypatch.setattr(batches, "_moments", lambda x, valid: passes.append(1) or real(x, valid))
    first = batches.feature_moments(split, "a")
    first[0].add_(1.0)  # a caller's copy: what is kept stays as it was
    again = batches.feature_moments(split, "a")
    assert len(passes) == 1
    assert torch.allclose(again[0], first[0] - 1.0) and torch.equal(again[1], first[1])
    valid = (torch.arange(6) < split.lengths["a"][:, None]).unsqueeze(-1)
    steps = split.features["a"][valid.expand_as(split.features["a"])].view(-1, 3)
    assert torch.allclose(again[0], steps.mean(0), atol=1e-6)
    split.features["a"].mul_(2.0)  # changed in place: taken again
    assert torch.allclose(batches.feature_moments(split, "a")[0], 2 * again[0], atol=1e-6)
    other = _split()  # equal values, other tensors
    batches.feature_moments(other, "a")
    assert len(passes) == 3
