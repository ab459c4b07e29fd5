import numpy as np
import pytest

from llmrec.metrics import (
    coverage_at_k,
    hr_at_k,
    long_tail_items,
    long_tail_share_at_k,
    mrr,
    ndcg_at_k,
    target_ranks,
    topk,
)
from retrieval.base import SequenceScorer, check_scores


def test_ranks_by_hand_with_padding_and_seen_items_excluded():
    # Columns: 0 = padding (huge score, must be ignored), items 1..5.
    scores = np.array([[99.0, 0.9, 0.8, 0.7, 0.6, 0.5],
                       [99.0, 0.9, 0.8, 0.7, 0.6, 0.5]])
    targets = np.array([3, 3])
    # User 0 saw nothing; user 1 saw items 1 and 2, which outranked the target.
    ranks = target_ranks(scores, targets, [np.array([], dtype=int), np.array([1, 2])])
    assert ranks.tolist() == [3, 1]


def test_target_is_never_excluded_even_if_listed_as_seen():
    scores = np.array([[0.0, 0.1, 0.9, 0.5]])
    assert target_ranks(scores, np.array([1]), [np.array([1, 2])]).tolist() == [2]


def test_ties_are_pessimistic():
    scores = np.array([[0.0, 1.0, 1.0, 1.0, 0.0]])
    # Target 2 ties with items 1 and 3: it ranks after both.
    assert target_ranks(scores, np.array([2]), [np.array([], dtype=int)]).tolist() == [3]


def test_ndcg_hr_mrr_by_hand():
    ranks = np.array([1, 2, 11])
    assert ndcg_at_k(ranks, 10) == pytest.approx((1.0 + 1.0 / np.log2(3)) / 3)
    assert hr_at_k(ranks, 10) == pytest.approx(2 / 3)
    assert hr_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert mrr(ranks) == pytest.approx((1 + 0.5 + 1 / 11) / 3)
    with pytest.raises(ValueError, match="1-based"):
        ndcg_at_k(np.array([0]), 10)
    with pytest.raises(ValueError, match="k must be"):
        hr_at_k(ranks, 0)


def test_topk_skips_padding_and_seen_and_orders_ties_by_index():
    scores = np.array([[5.0, 0.3, 0.9, 0.9, 0.1, 0.8]])
    got = topk(scores, [np.array([3])], k=3)
    assert got.tolist() == [[2, 5, 1]]
    # Ties at the cut are ordered by lower index.
    tied = np.array([[0.0, 1.0, 1.0, 1.0, 1.0]])
    assert topk(tied, [np.array([], dtype=int)], k=2).tolist() == [[1, 2]]
    # Fewer candidates than k: padded with 0.
    assert topk(np.array([[0.0, 1.0, 2.0]]), [np.array([1])], k=3).tolist() == [[2, 0, 0]]


def test_topk_agrees_with_target_ranks_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(8, 50))
    seen = [rng.choice(np.arange(1, 50), size=5, replace=False) for _ in range(8)]
    top = topk(scores, seen, k=10)
    for b in range(8):

        # The item at position j of the top-k list has rank j+1.
        r = target_ranks(np.repeat(scores[[b]], 10, axis=0), top[b], [seen[b]] * 10)
        assert r.tolist() == list(range(1, 11))
        assert not np.isin(top[b], seen[b]).any() and (top[b] > 0).all()


def test_coverage_and_long_tail_share():
    lists = np.array([[1, 2, 0], [2, 3, 0]])
    assert coverage_at_k(lists, n_items=6) == pytest.approx(3 / 6)
    assert long_tail_share_at_k(lists, {3, 4}) == pytest.approx(1 / 4)
    counts = np.array([0, 50, 40, 3, 2, 1])  # padding, items 1..5
    assert long_tail_items(counts, head_share=0.4).tolist() == [3, 4, 5]


def test_scorer_protocol_and_output_check():
    class Const:
        name = "const"

        def score(self, histories, user_ids):
            return np.ones((len(histories), 4), dtype=np.float32)

    s = Const()
    assert isinstance(s, SequenceScorer)
    out = check_scores(s.score([np.array([1])], ["u"]), 1, 4)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        check_scores(np.ones((1, 3)), 1, 4)
