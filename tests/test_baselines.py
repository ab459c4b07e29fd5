import numpy as np
import pandas as pd
import pytest

from llmrec.data import ItemVocab
from llmrec.metrics import target_ranks, topk
from retrieval.base import SequenceScorer, check_scores
from retrieval.baselines import ItemKNNScorer, PopularityScorer, count_items


def _events(pairs):
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs]})


VOCAB = ItemVocab(ids=("a", "b", "c", "d", "e"))
# b is the most popular, then a; c and d always co-occur; e is seen once, with a.
EVENTS = _events([("1", "a"), ("1", "b"), ("1", "e"), ("2", "a"), ("2", "b"), ("3", "b"), ("3", "c"), ("3", "d"),
                  ("4", "c"), ("4", "d"), ("5", "b")])


def test_popularity_ranks_the_most_popular_first():
    pop = PopularityScorer.fit(EVENTS, VOCAB)
    assert isinstance(pop, SequenceScorer)
    scores = check_scores(pop.score([np.array([], dtype=int)] * 2, ["x", "y"]), 2, VOCAB.size)
    top = topk(scores, [np.array([], dtype=int), VOCAB.encode(["b"])], k=2)
    assert VOCAB.decode(top[0]) == ["b", "a"]
    assert VOCAB.decode(top[1]) == ["a", "c"]  # b seen; a, c, d tie at 2 -> lower index first
    assert count_items(EVENTS, VOCAB)[0] == 0


def test_item_knn_scores_co_occurring_items_and_falls_back_to_popularity():
    knn = ItemKNNScorer.fit(EVENTS, VOCAB, neighbors=4, shrink=0.0)
    assert isinstance(knn, SequenceScorer)
    h = VOCAB.encode(["c"])
    scores = check_scores(knn.score([h, np.array([], dtype=int)], ["x", "y"]), 2, VOCAB.size)
    assert VOCAB.decode(topk(scores[:1], [h], k=1)[0]) == ["d"]
    # c and d co-occur for both their users: cosine 1.
    assert knn.similarity[VOCAB.index["c"], VOCAB.index["d"]] == pytest.approx(1.0)
    # Cold user: popularity order.
    assert VOCAB.decode(topk(scores[1:], [np.array([], dtype=int)], k=2)[0]) == ["b", "a"]
    ranks = target_ranks(scores[:1], VOCAB.encode(["d"]), [h])
    assert ranks.tolist() == [1]


def test_item_knn_neighbors_and_shrink_are_applied():
    full = ItemKNNScorer.fit(EVENTS, VOCAB, neighbors=4, shrink=0.0)
    one = ItemKNNScorer.fit(EVENTS, VOCAB, neighbors=1, shrink=0.0)
    assert (np.count_nonzero(one.similarity, axis=1) <= 1).all()
    assert np.count_nonzero(full.similarity) > np.count_nonzero(one.similarity)
    shrunk = ItemKNNScorer.fit(EVENTS, VOCAB, neighbors=4, shrink=10.0)
    a, e = VOCAB.index["a"], VOCAB.index["e"]
    assert 0 < shrunk.similarity[a, e] < full.similarity[a, e]
    with pytest.raises(ValueError, match="neighbors"):
        ItemKNNScorer.fit(EVENTS, VOCAB, neighbors=0)


def test_baselines_beat_chance_on_tiny_movielens(tiny):
    from llmrec.data import user_sequences
    from llmrec.data.split import split_leave_one_out

    split = split_leave_one_out(tiny.events)
    vocab = ItemVocab.from_items(tiny.items)
    hist = user_sequences(split.history("test"), vocab)
    users = list(split.test["user_id"])
    histories = [hist[u] for u in users]
    targets = vocab.encode(split.test["item_id"])
    for scorer in (PopularityScorer.fit(split.train, vocab), ItemKNNScorer.fit(split.train, vocab)):
        ranks = target_ranks(scorer.score(histories, users), targets, histories)
        n_candidates = vocab.size - 1 - np.array([len(h) for h in histories])
        assert ranks.mean() < 0.5 * n_candidates.mean()  # chance is about half the candidates
