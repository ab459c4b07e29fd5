"""Grounding that checks meaning: does a cited history line support the interest that cites it?

Mining asks the model to cite, for each interest, the narrative lines (history items) it rests on. Two
measures of those citations:

- exists: the cited line number names a line of the narrative (1 <= n <= lines). A model that cites [1, 2]
  under every interest scores 1.0, so this only says the answer is well formed.
- grounded: the cited line's item carries an attribute that the interest's name or one of its tags names
  (same tag -> attribute mapping as the tag metrics), or the interest names the item's title. Citing lines
  whose items have nothing to do with the interest scores low.

Both are shares of the cited line numbers; a line repeated under one interest counts as cited twice but can
be grounded once. The mappings are parameters, as in `llmrec.eval.tag_metrics`.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Sequence

from llmrec.data import strip_year
from llmrec.schema import Interest, Item, Tag

TagAttributes = Callable[[str], "frozenset[str] | None"]
ItemAttributes = Callable[[Item], frozenset[str]]
_ARTICLE_LAST = re.compile(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El)$")
_MIN_TITLE_CHARS = 3  # shorter titles ("M", "Up") would be "named" by ordinary words


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").split()).strip(" \"'.,;:")


def interest_attributes(name: str, tags: Iterable[str], tag_attributes: TagAttributes) -> frozenset[str]:
    """The attributes an interest names: those of its name plus those of each of its tags."""
    attrs: set[str] = set(tag_attributes(name) or ())
    for tag in tags:
        attrs.update(tag_attributes(tag) or ())
    return frozenset(attrs)


def names_title(text: str, title: str) -> bool:
    """True when `text` names the title: as stored, without its year, or with a trailing article moved first
    ("Godfather, The (1972)" -> "the godfather"), word-bounded, case-insensitive."""
    base = strip_year(title)
    forms = {title, base}
    m = _ARTICLE_LAST.match(base)
    if m:
        forms.add(f"{m.group(2)} {m.group(1)}")
    haystack = _normalise(text)
    return any(re.search(r"(?<!\w)" + re.escape(f) + r"(?!\w)", haystack)
               for f in map(_normalise, forms) if len(f) >= _MIN_TITLE_CHARS)


def citation_grounded(name: str, tags: Sequence[str], item: Item, tag_attributes: TagAttributes,
                      item_attributes: ItemAttributes) -> bool:
    """True when the cited item carries an attribute the interest (name or tags) names, or the name names
    the item's title."""
    if interest_attributes(name, tags, tag_attributes) & frozenset(item_attributes(item)):
        return True
    return names_title(name, item.title)


def tags_by_interest(tags: Sequence[Tag]) -> dict[str, list[str]]:
    """Tag texts per interest name: a tag belongs to the interest it was listed under (`Tag.interest`)."""
    out: dict[str, list[str]] = {}
    for tag in tags:
        if tag.interest is not None:
            out.setdefault(tag.interest, []).append(tag.text)
    return out


def count_grounded(interests: Sequence[Interest], tags: Sequence[Tag], items: Mapping[str, Item],
                   tag_attributes: TagAttributes, item_attributes: ItemAttributes) -> int:
    """How many (interest, evidence item) citations of one profile are grounded; an item missing from the
    catalogue is not. A tag belongs to the interest whose name it carries (`Tag.interest`)."""
    by_interest = tags_by_interest(tags)
    grounded = 0
    for interest in interests:
        own = by_interest.get(interest.name, [])
        grounded += sum(iid in items and citation_grounded(interest.name, own, items[iid], tag_attributes,
                                                           item_attributes)
                        for iid in interest.evidence)
    return grounded


def grounding_rates(cited: int, dropped: int, grounded: int) -> dict[str, float]:
    """{"exists": share of cited lines inside the narrative, "grounded": share whose item supports the
    interest}; both 0.0 when nothing was cited."""
    if min(cited, dropped, grounded) < 0 or dropped > cited or grounded > cited - dropped:
        raise ValueError(f"inconsistent citation counts: cited={cited}, dropped={dropped}, grounded={grounded}")
    if cited == 0:
        return {"exists": 0.0, "grounded": 0.0}
    return {"exists": 1.0 - dropped / cited, "grounded": grounded / cited}


def attribute_evidence(interests: Sequence[Interest], tags: Sequence[Tag], item_ids: Sequence[str],
                       items: Mapping[str, Item], tag_attributes: TagAttributes, item_attributes: ItemAttributes,
                       n: int) -> list[Interest]:
    """`interests` with up to `n` evidence items each, attributed from the narrative's items rather than cited.

    For an answer that cites no lines (`MiningConfig.max_evidence` = 0): an item is evidence for an interest when
    `citation_grounded` holds (it carries an attribute the interest or its tags name, or the interest names its
    title); the items sharing most attributes come first, then the most recent (`item_ids` is in narrative order,
    most recent first). An interest that no item supports keeps no evidence. Grounded by construction, so these
    are not counted as citations in the grounding rates.
    """
    by_interest = tags_by_interest(tags)
    known = list(dict.fromkeys(i for i in item_ids if i in items))
    out = []
    for interest in interests:
        own = by_interest.get(interest.name, [])
        wanted = interest_attributes(interest.name, own, tag_attributes)
        scored = [(len(wanted & frozenset(item_attributes(items[iid]))), pos, iid) for pos, iid in enumerate(known)
                  if citation_grounded(interest.name, own, items[iid], tag_attributes, item_attributes)]
        best = [iid for _, _, iid in sorted(scored, key=lambda s: (-s[0], s[1]))[:n]]
        out.append(Interest(name=interest.name, evidence=tuple(best), why=interest.why))
    return out
