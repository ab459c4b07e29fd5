"""The tag vocabulary: item attributes, "modifier + core" tags, and RecGPT's tag HR@k.

An item's *attributes* are lowercase tokens: its genres ("comedy", "sci-fi", "film-noir", "children's")
and its release decade ("1990s"). A *tag* is free text such as "romantic comedy" or "dark 90s sci-fi";
`tag_attributes` reads the attributes a tag names, word by word, with this mapping (it defines tag HR@k):

    genre names, lowercase, with simple plurals     -> that genre   ("comedies" -> comedy, "westerns" -> western)
    romantic, romance, love                         -> romance
    animated, animation, cartoon(s), anime          -> animation
    scary, horror, spooky, slasher                  -> horror
    funny, comic, comedic, comedy, humorous         -> comedy
    noir, film-noir, "film noir"                    -> film-noir
    sci-fi, scifi, "science fiction", futuristic    -> sci-fi
    children's, childrens, children, kids, family   -> children's
    dramatic, drama                                 -> drama
    thrilling, suspenseful, suspense, thriller      -> thriller
    criminal, gangster, heist, crime                -> crime
    adventurous, adventure                          -> adventure
    musical, musicals, music                        -> musical
    mysterious, mystery, detective, whodunit        -> mystery
    magical, fantasy                                -> fantasy
    documentary, documentaries, docs                -> documentary
    war, wartime, military                          -> war
    western, cowboy                                 -> western
    action                                          -> action
    decades: "1990s", "90s", "'90s", "nineties"     -> "1990s" (two-digit 10s..90s read as 19xx, 00s as 2000s)

Hyphenated words that are not themselves in the table are split ("action-adventure" -> action,
adventure). Every other word ("dark", "classic", "movies") names nothing. A tag *hits* an item when it
names at least one attribute and the item has all of them; a tag that names nothing never hits.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

from llmrec.schema import Item

# Canonical genre attributes (ML-100K genres, lowercased; "unknown" is not an attribute).
GENRES = (
    "action", "adventure", "animation", "children's", "comedy", "crime", "documentary", "drama", "fantasy",
    "film-noir", "horror", "musical", "mystery", "romance", "sci-fi", "thriller", "war", "western",
)  # fmt: skip
_GENRE_SET = frozenset(GENRES)

# Word -> attribute. Genre names and their plain plurals are added below.
_WORDS: dict[str, str] = {
    "romantic": "romance", "love": "romance",
    "animated": "animation", "cartoon": "animation", "cartoons": "animation", "anime": "animation",
    "scary": "horror", "spooky": "horror", "slasher": "horror",
    "funny": "comedy", "comic": "comedy", "comedic": "comedy", "comedies": "comedy", "humorous": "comedy",
    "noir": "film-noir", "noirs": "film-noir",
    "scifi": "sci-fi", "futuristic": "sci-fi",
    "childrens": "children's", "children": "children's", "kids": "children's", "kid": "children's",
    "kids'": "children's", "family": "children's",
    "dramatic": "drama",
    "thrilling": "thriller", "suspenseful": "thriller", "suspense": "thriller",
    "criminal": "crime", "gangster": "crime", "heist": "crime",
    "adventurous": "adventure",
    "music": "musical",
    "mysterious": "mystery", "mysteries": "mystery", "detective": "mystery", "whodunit": "mystery",
    "magical": "fantasy", "fantasies": "fantasy",
    "documentaries": "documentary", "docs": "documentary",
    "wartime": "war", "military": "war",
    "cowboy": "western",
}  # fmt: skip
for _g in GENRES:
    _WORDS.setdefault(_g, _g)
    _WORDS.setdefault(_g + "s", _g)
_PHRASES = {("science", "fiction"): "sci-fi", ("film", "noir"): "film-noir"}
_NUMBER_WORDS = {
    "twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
    "seventies": 1970, "eighties": 1980, "nineties": 1990,
}  # fmt: skip
_DECADE = re.compile(r"^'?(\d{2}|\d{4})'?s$")

# Which genre reads as the noun ("core") of a two-genre tag: earlier = more core-like.
_CORE_ORDER = (
    "drama", "comedy", "thriller", "children's", "western", "musical", "documentary", "horror", "mystery",
    "war", "crime", "adventure", "action", "sci-fi", "fantasy", "romance", "animation", "film-noir",
)  # fmt: skip
_MODIFIER_FORM = {"romance": "romantic", "animation": "animated", "film-noir": "noir"}


def decade_of(year: int) -> str:
    """1994 -> "1990s"."""
    return f"{year // 10 * 10}s"


def item_attributes(item: Item) -> frozenset[str]:
    """The item's canonical attributes: lowercased known genres plus its decade."""
    attrs = {g.lower() for g in item.genres if g.lower() in _GENRE_SET}
    if item.year is not None:
        attrs.add(decade_of(item.year))
    return frozenset(attrs)


def _genres_in_core_order(attrs: Iterable[str]) -> list[str]:
    return sorted((a for a in attrs if a in _GENRE_SET), key=_CORE_ORDER.index)


def item_tags(item: Item) -> list[str]:
    """"modifier + core" tags that describe the item; every tag's attributes are a subset of the item's.

    Decade + each genre first ("1990s comedy"), then each genre pair with the more noun-like genre as
    core ("romantic comedy", "animated children's"). A genre-less item gets "1990s film"; a year-less
    single-genre item gets the bare genre.
    """
    genres = _genres_in_core_order(item_attributes(item))
    decade = decade_of(item.year) if item.year is not None else None
    tags: list[str] = []
    if decade is not None:
        tags += [f"{decade} {g}" for g in genres] or [f"{decade} film"]
    for i, core in enumerate(genres):
        for mod in genres[i + 1 :]:
            tags.append(f"{_MODIFIER_FORM.get(mod, mod)} {core}")
    if not tags and genres:
        tags = genres[:1]
    return tags


def _word_decade(word: str) -> str | None:
    if word in _NUMBER_WORDS:
        return f"{_NUMBER_WORDS[word]}s"
    m = _DECADE.match(word)
    if m is None:
        return None
    n = int(m.group(1))
    if n >= 100:
        return f"{n}s" if n % 10 == 0 else None
    if n % 10:
        return None
    return f"{2000 + n}s" if n == 0 else f"{1900 + n}s"


def _word_attributes(word: str) -> list[str]:
    word = word.strip(".,;:!?\"()[]")
    if not word:
        return []
    if word in _WORDS:
        return [_WORDS[word]]
    decade = _word_decade(word)
    if decade is not None:
        return [decade]
    if "-" in word:
        return [a for part in word.split("-") for a in _word_attributes(part)]
    return []


def tag_attributes(tag: str) -> frozenset[str] | None:
    """The attributes a tag names (mapping in the module docstring); None when it names none."""
    words = tag.lower().replace("\u2019", "'").replace("/", " ").replace("&", " ").split()
    attrs: set[str] = set()
    i = 0
    while i < len(words):
        pair = (words[i].strip(".,;:"), words[i + 1].strip(".,;:")) if i + 1 < len(words) else None
        if pair in _PHRASES:
            attrs.add(_PHRASES[pair])
            i += 2
            continue
        attrs.update(_word_attributes(words[i]))
        i += 1
    return frozenset(attrs) or None


def tag_hits(tag: str, item: Item) -> bool:
    """True when the tag names at least one attribute and the item has all of them."""
    attrs = tag_attributes(tag)
    return attrs is not None and attrs <= item_attributes(item)


def tag_hit_rate(predicted: Sequence[Sequence[str]], next_items: Sequence[Item], k: int) -> float:
    """RecGPT's tag HR@k: share of users for whom one of their top-k tags hits their next item."""
    if len(predicted) != len(next_items):
        raise ValueError(f"predicted has {len(predicted)} users but next_items has {len(next_items)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not predicted:
        raise ValueError("tag_hit_rate needs at least one user")
    hits = sum(any(tag_hits(t, item) for t in tags[:k]) for tags, item in zip(predicted, next_items))
    return hits / len(predicted)


def _top(counts: Counter[str], k: int) -> list[str]:
    # Most frequent first; ties broken alphabetically so the baseline is deterministic.
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def popular_tags(histories: Iterable[Sequence[Item]], k: int) -> list[str]:
    """Heuristic baseline: the k tags most frequent over every item every user has taken."""
    counts: Counter[str] = Counter()
    for items in histories:
        for item in items:
            counts.update(item_tags(item))
    return _top(counts, k)


def history_tags(items: Sequence[Item], k: int) -> list[str]:
    """Heuristic baseline (and the mining fallback): the user's k most frequent past item tags."""
    counts: Counter[str] = Counter()
    for item in items:
        counts.update(item_tags(item))
    return _top(counts, k)
