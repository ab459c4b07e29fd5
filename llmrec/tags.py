"""Tags read against a dataset's attribute vocabulary, the heuristic tag baselines, and RecGPT's tag HR@k.

A *tag* is free text such as "romantic comedy" or "dark 90s sci-fi"; `tag_attributes` reads the attributes it
names through the vocabulary's lexicon (`llmrec.vocab`). A tag *hits* an item when it names at least one
attribute and the item has all of them; a tag that names nothing never hits.

Every function takes the vocabulary as `vocab`; None means the MovieLens vocabulary (`movie_vocabulary()`:
18 genres, decades, the movie synonym table), which is what these functions meant before vocabularies
existed. Build a dataset's own with `llmrec.vocab.build_vocabulary`.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from llmrec.movie_lexicon import GENRES  # noqa: F401 (re-exported)
from llmrec.schema import Item
from llmrec.vocab import AttributeVocab, decade_of, movie_vocabulary  # noqa: F401 (decade_of re-exported)


def _vocab(vocab: AttributeVocab | None) -> AttributeVocab:
    return movie_vocabulary() if vocab is None else vocab


def item_attributes(item: Item, vocab: AttributeVocab | None = None) -> frozenset[str]:
    """The item's attributes under the vocabulary (categories, brand, decade, keywords)."""
    return _vocab(vocab).item_attributes(item)


def item_tags(item: Item, vocab: AttributeVocab | None = None) -> list[str]:
    """"modifier + core" tags that describe the item; every tag's attributes are a subset of the item's."""
    return _vocab(vocab).item_tags(item)


def tag_attributes(tag: str, vocab: AttributeVocab | None = None) -> frozenset[str] | None:
    """The attributes a tag names; None when it names none."""
    return _vocab(vocab).tag_attributes(tag)


def tag_hits(tag: str, item: Item, vocab: AttributeVocab | None = None) -> bool:
    """True when the tag names at least one attribute and the item has all of them."""
    v = _vocab(vocab)
    attrs = v.tag_attributes(tag)
    return attrs is not None and attrs <= v.item_attributes(item)


def tag_hit_rate(predicted: Sequence[Sequence[str]], next_items: Sequence[Item], k: int,
                 vocab: AttributeVocab | None = None) -> float:
    """RecGPT's tag HR@k: share of users for whom one of their top-k tags hits their next item."""
    if len(predicted) != len(next_items):
        raise ValueError(f"predicted has {len(predicted)} users but next_items has {len(next_items)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not predicted:
        raise ValueError("tag_hit_rate needs at least one user")
    hits = sum(any(tag_hits(t, item, vocab) for t in tags[:k]) for tags, item in zip(predicted, next_items))
    return hits / len(predicted)


def _top(counts: Counter[str], k: int) -> list[str]:
    # Most frequent first; ties broken alphabetically so the baseline is deterministic.
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def popular_tags(histories: Iterable[Sequence[Item]], k: int, vocab: AttributeVocab | None = None) -> list[str]:
    """Heuristic baseline: the k tags most frequent over every item every user has taken."""
    v = _vocab(vocab)
    counts: Counter[str] = Counter()
    for items in histories:
        for item in items:
            counts.update(v.item_tags(item))
    return _top(counts, k)


def history_tags(items: Sequence[Item], k: int, vocab: AttributeVocab | None = None) -> list[str]:
    """Heuristic baseline (and the mining fallback): the user's k most frequent past item tags."""
    v = _vocab(vocab)
    counts: Counter[str] = Counter()
    for item in items:
        counts.update(v.item_tags(item))
    return _top(counts, k)
