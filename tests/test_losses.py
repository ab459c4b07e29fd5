"""The three-tower losses (retrieval.losses) and TowerConfig validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from llmrec.config import TowerConfig
from retrieval.losses import (TEMPERATURE_MAX, TEMPERATURE_MIN, all_candidates, build_candidates, candidate_log_q,
                              clip_temperature, combine_losses, correct_logq, cosine_logits, full_softmax_loss,
                              multi_positive_softmax_loss, resolve_softmax, same_category_mask, sample_uniform,
                              sampled_softmax_loss)


def test_logq_shifts_each_column_by_exactly_minus_log_q():
    torch.manual_seed(0)
    pop = torch.rand(11, dtype=torch.float64)
    pop[0] = 0.0
    pop /= pop.sum()
    log_q = candidate_log_q(pop, batch_positives=5, n_uniform=7)  # [11]
    cand = torch.tensor([1, 3, 4, 9])
    logits = torch.randn(6, 4, dtype=torch.float64)
    shifted = correct_logq(logits, log_q[cand])
    torch.testing.assert_close(shifted - logits, -log_q[cand][None, :].expand(6, 4))
    # The derivation: q_i = 1 - (1 - p_i)^B (1 - 1/N)^S.
    expected = np.log(1 - (1 - pop.numpy()[1:]) ** 5 * (1 - 1 / 10) ** 7)
    np.testing.assert_allclose(log_q.numpy()[1:], expected, rtol=1e-12)


def test_candidate_log_q_matches_simulated_inclusion_frequency():
    """q_i is the probability that item i is in the de-duplicated candidate set (in-batch + uniform)."""
    rng = np.random.default_rng(0)
    n, b, s, trials = 8, 4, 3, 40_000
    p = np.r_[0.0, rng.dirichlet(np.ones(n))]  # [N+1], padding 0
    seen = np.zeros(n + 1)
    for _ in range(trials):
        pos = rng.choice(n + 1, size=b, p=p)
        uni = rng.integers(1, n + 1, size=s)
        seen[np.unique(np.r_[pos, uni])] += 1
    q = np.exp(candidate_log_q(torch.from_numpy(p), b, s).numpy())
    np.testing.assert_allclose(seen[1:] / trials, q[1:], atol=0.01)
    # Without uniform draws (no mixed negatives) only the popularity term remains.
    q_batch = np.exp(candidate_log_q(torch.from_numpy(p), b, 0).numpy())
    np.testing.assert_allclose(q_batch[1:], 1 - (1 - p[1:]) ** b, rtol=1e-9)


def test_temperature_is_clipped_to_range_with_gradient_inside():
    low = clip_temperature(torch.tensor(math.log(1e-5)))
    high = clip_temperature(torch.tensor(math.log(1e5)))
    assert low.item() == pytest.approx(TEMPERATURE_MIN) and low.item() == pytest.approx(0.01)
    assert high.item() == pytest.approx(TEMPERATURE_MAX) and high.item() == pytest.approx(100.0)
    inside = torch.tensor(math.log(0.2), requires_grad=True)
    tau = clip_temperature(inside)
    assert tau.item() == pytest.approx(0.2)
    tau.backward()
    assert inside.grad.item() == pytest.approx(0.2)  # d exp(x)/dx = exp(x)


@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0, 100.0])
def test_cosine_logits_are_bounded_by_inverse_temperature(tau):
    torch.manual_seed(1)
    q, k = torch.randn(5, 8) * 30, torch.randn(7, 8) * 0.01
    logits = cosine_logits(q, k, tau)
    assert logits.shape == (5, 7)
    assert logits.abs().max().item() <= 1 / tau * (1 + 1e-5)
    same = cosine_logits(q[:1], q[:1] * 3, tau)  # identical direction: exactly 1 / tau
    assert same.item() == pytest.approx(1 / tau, rel=1e-5)


def test_mixed_negative_candidates_shapes_and_labels():
    gen = torch.Generator().manual_seed(0)
    positives = torch.tensor([5, 2, 5, 9, 2, 7])  # [P] with repeats
    uniform = sample_uniform(20, 16, gen)  # [S]
    assert uniform.shape == (16,) and uniform.min() >= 1 and uniform.max() <= 20
    cand, labels = build_candidates(positives, uniform)
    assert cand.ndim == 1 and labels.shape == positives.shape
    assert torch.equal(cand, torch.unique(torch.cat([positives, uniform])))  # distinct, sorted
    assert cand.numel() <= positives.numel() + uniform.numel()
    assert torch.equal(cand[labels], positives)  # each row's positive column holds its item
    in_batch, lab = build_candidates(positives, None)  # in-batch only
    assert in_batch.tolist() == [2, 5, 7, 9] and torch.equal(in_batch[lab], positives)
    logits = cosine_logits(torch.randn(6, 4), torch.randn(cand.numel(), 4), 0.1)
    assert logits.shape == (6, cand.numel())


def test_multi_positive_loss_reduces_to_cross_entropy_with_one_positive():
    torch.manual_seed(2)
    logits = torch.randn(4, 6)
    labels = torch.tensor([0, 3, 5, 1])
    one_hot = torch.nn.functional.one_hot(labels, 6).bool()
    torch.testing.assert_close(multi_positive_softmax_loss(logits, one_hot), sampled_softmax_loss(logits, labels))
    more = one_hot.clone()
    more[:, 2] = True  # an extra positive can only raise the positive mass
    assert multi_positive_softmax_loss(logits, more) < multi_positive_softmax_loss(logits, one_hot)
    with pytest.raises(ValueError, match="no row"):
        multi_positive_softmax_loss(logits, torch.zeros(4, 6, dtype=torch.bool))


def test_same_category_mask():
    categories = torch.tensor([-1, 0, 1, 0, 2, -1])  # row 0 padding, item 5 has no category
    mask = same_category_mask(categories, torch.tensor([1, 5]), torch.tensor([1, 2, 3, 5]))
    assert mask.tolist() == [[True, False, True, False], [False, False, False, False]]


@pytest.mark.parametrize("which", ["sampled", "multi"])
def test_each_loss_decreases_on_a_tiny_run(which):
    torch.manual_seed(3)
    queries = torch.nn.Parameter(torch.randn(8, 6))
    items = torch.nn.Parameter(torch.randn(12, 6))
    categories = torch.arange(12) % 3
    positives = torch.randint(1, 12, (8,))
    cand, labels = build_candidates(positives, torch.arange(1, 12))
    log_q = candidate_log_q(torch.full((12,), 1 / 11.0), 8, 0)
    opt = torch.optim.Adam([queries, items], lr=0.05)
    losses = []
    for _ in range(30):
        logits = correct_logq(cosine_logits(queries, items[cand], 0.2), log_q[cand].float())
        if which == "sampled":
            loss = sampled_softmax_loss(logits, labels)
        else:
            loss = multi_positive_softmax_loss(logits, same_category_mask(categories, positives, cand))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_combine_losses_weights_tag_and_category_by_alpha():
    col, tag, cate = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert combine_losses(col, tag, cate, 0.5).item() == pytest.approx(2 + 1.5 + 2.5)
    assert combine_losses(col, tag, cate, 1.0).item() == pytest.approx(5.0)  # L_cate ignored
    assert combine_losses(col, tag, cate, 0.0).item() == pytest.approx(7.0)  # L_tag ignored
    with pytest.raises(ValueError, match="alpha"):
        combine_losses(col, tag, cate, 1.5)


@pytest.mark.parametrize("bad, match", [
    ({"temperature": 0.001}, "temperature"),
    ({"temperature": 500.0}, "temperature"),
    ({"dim": 10, "heads": 3}, "heads"),
    ({"beta_grid": []}, "beta_grid"),
    ({"beta_grid": [0.5, 1.2]}, "beta_grid"),
    ({"alpha": 1.5}, "alpha"),
    ({"encoder": "word2vec"}, "encoder"),
    ({"tag_pooling": "sum"}, "tag_pooling"),
    ({"uniform_negative": 10}, "uniform_negative"),  # unknown key
    ({"softmax": "hierarchical"}, "softmax"),
    ({"full_softmax_max_items": 0}, "full_softmax_max_items"),
    ({"eval_every": 0}, "eval_every"),
    ({"min_epochs": 0}, "min_epochs"),
    ({"smooth_evals": 0}, "smooth_evals"),
    ({"init_item_embeddings": "bert"}, "init_item_embeddings"),
    ({"init_item_embeddings": "sasrec", "id_embedding": False}, "id_embedding"),
])
def test_tower_config_rejects_bad_values(bad, match):
    with pytest.raises(ValidationError, match=match):
        TowerConfig(**bad)


def test_tower_config_round_trips_json(tmp_path):
    cfg = TowerConfig(encoder="hashed-bow", dim=32, beta_grid=(0.0, 0.5, 1.0), tag_pooling="max", softmax="sampled",
                      full_softmax_max_items=10, eval_every=2, min_epochs=3, smooth_evals=2,
                      init_item_embeddings="sasrec")
    assert TowerConfig.from_json(cfg.to_json(tmp_path / "c.json")) == cfg


def test_full_softmax_equals_sampled_softmax_over_the_whole_catalogue():
    """Sampled softmax whose sample is every item, with uniform logQ, is the full softmax: same loss, same grads."""
    torch.manual_seed(4)
    n, d = 9, 5
    positives = torch.tensor([3, 1, 9, 3, 6])  # [P]
    q_full = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    t_full = torch.randn(n + 1, d, dtype=torch.float64, requires_grad=True)  # [N+1, d], row 0 padding
    q_s = q_full.detach().clone().requires_grad_(True)
    t_s = t_full.detach().clone().requires_grad_(True)
    full = full_softmax_loss(q_full, t_full, positives, 0.3)
    cand, labels = build_candidates(positives, torch.arange(1, n + 1))  # the sample covers the catalogue
    assert torch.equal(cand, torch.arange(1, n + 1))
    uniform_pop = torch.full((n + 1,), 1.0 / n, dtype=torch.float64)
    uniform_pop[0] = 0.0
    log_q = candidate_log_q(uniform_pop, positives.numel(), 64)  # equal for every item: a constant shift
    sampled = sampled_softmax_loss(correct_logq(cosine_logits(q_s, t_s[cand], 0.3), log_q[cand]), labels)
    torch.testing.assert_close(full, sampled)
    full.backward()
    sampled.backward()
    torch.testing.assert_close(q_full.grad, q_s.grad)
    torch.testing.assert_close(t_full.grad, t_s.grad)
    assert not t_full.grad[0].any()  # the padding row is never a candidate
    # And it is plain cross-entropy over the N item logits.
    ref = torch.nn.functional.cross_entropy(cosine_logits(q_full, t_full[1:], 0.3), positives - 1)
    torch.testing.assert_close(full, ref)


def test_all_candidates_and_resolve_softmax():
    cand, labels = all_candidates(4, torch.tensor([4, 1]))
    assert cand.tolist() == [1, 2, 3, 4] and labels.tolist() == [3, 0]
    with pytest.raises(ValueError, match="1..4"):
        all_candidates(4, torch.tensor([0]))
    assert resolve_softmax("auto", 1000, 50_000) == "full"
    assert resolve_softmax("auto", 60_000, 50_000) == "sampled"
    assert resolve_softmax("auto", 50_000, 50_000) == "full"  # the bound is inclusive
    assert resolve_softmax("full", 60_000, 50_000) == "full" and resolve_softmax("sampled", 10, 50_000) == "sampled"
    with pytest.raises(ValueError, match="softmax"):
        resolve_softmax("hierarchical", 10, 10)
