"""The closed set of facts one explanation may use: the item, a matching interest, the user's own evidence items.

Facts are read straight from `Item` (title, year, genres, text, brand) and the dataset's `Domain` nouns; no
tag vocabulary is needed, so the same code explains movies, magazines or any imported catalogue.

Table key (see `facts_key`): (normalised interest, item id, evidence item ids). The explanation text is a pure
function of the facts in its prompt, so keying by exactly those facts makes the table a cache of that
function: two users whose histories give the same evidence for the same item and interest share one row,
a new user (history passed at request time) finds a row whenever their facts coincide with a built one,
and a row can never be served for facts it was not written from. Keying per (user, item) would never
serve a new user and grows as users x k; keying per (interest, item) alone cannot cite history items.
"""

from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from llmrec.data.behaviors import COMMON_BEHAVIORS, LIKED_CLAUSE, BehaviorVocab, explain_clause
from llmrec.schema import Domain, Item

# Surface forms of common genre / category words -> one canonical label. The check uses it to find category
# words in free text; catalogue categories outside this list are matched verbatim (`category_pattern`).
GENRE_FORMS: dict[str, str] = {
    "action": r"action",
    "adventure": r"adventures?",
    "animation": r"animation|animated|cartoons?",
    "children's": r"children'?s|kids'?|family",
    "comedy": r"comed(?:y|ies)|comedic|rom-?coms?",
    "crime": r"crime",
    "documentary": r"documentar(?:y|ies)",
    "drama": r"dramas?|dramatic",
    "fantasy": r"fantas(?:y|ies)",
    "film-noir": r"film[- ]noir|noir",
    "horror": r"horror",
    "musical": r"musicals?",
    "mystery": r"myster(?:y|ies)",
    "romance": r"romances?|romantic",
    "sci-fi": r"sci-?fi|science[- ]fiction",
    "thriller": r"thrillers?",
    "war": r"war",
    "western": r"westerns?",
}
_GENRE_RE = {label: re.compile(rf"^(?:{forms})$") for label, forms in GENRE_FORMS.items()}
# "1990s", "90s", "'90s": the decade as its first year.
DECADE = re.compile(r"(?<![\w'])(?:(1[89]|20)(\d)0s|'?(\d)0s)\b")
YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")
# Leading articles MovieLens moves to the end ("Usual Suspects, The"; "Cité des enfants perdus, La").
_ARTICLE_SUFFIX = re.compile(r"^(.*), (The|A|An|La|Le|Les|L'|Il|Das|Der|Die|El|Los|Las)$")
_TRAILING_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
GENERIC = Domain()  # item/items/user: the nouns of a dataset that names none


@lru_cache(maxsize=65536)  # a catalogue has few distinct genre strings; the request path asks for them per item
def canonical_genre(genre: str) -> str:
    """The lexicon label of a genre name ("Sci-Fi" -> "sci-fi", "Romantic" -> "romance"); else it casefolded."""
    low = " ".join(genre.casefold().split())
    return next((label for label, rx in _GENRE_RE.items() if rx.match(low)), low)


def item_genres(item: Item) -> frozenset[str]:
    """The item's genres as canonical labels ("unknown" is no genre)."""
    return _genres(item.genres)


@lru_cache(maxsize=65536)
def _genres(genres: tuple[str, ...]) -> frozenset[str]:
    return frozenset(canonical_genre(g) for g in genres if g.strip() and g.casefold() != "unknown")


def decade_of(year: int | None) -> int | None:
    return year // 10 * 10 if year is not None else None


def parse_decade(match: re.Match) -> int:
    """A `DECADE` match as its first year; two-digit decades are read as 19xx."""
    if match.group(1):
        return int(match.group(1) + match.group(2) + "0")
    return 1900 + int(match.group(3)) * 10


def natural_title(title: str) -> str:
    """The title as a sentence names it: "First Wives Club, The" -> "The First Wives Club"; alternate titles
    in a trailing parenthesis are dropped ("City of Lost Children, The (Cité des ...)" -> "The City of ...")."""
    base = _TRAILING_PAREN.sub("", title).strip() or title.strip()
    m = _ARTICLE_SUFFIX.match(base)
    return f"{m.group(2)} {m.group(1)}".replace("L' ", "L'") if m else base


def title_forms(title: str) -> list[str]:
    """Every accepted way to name a title (raw catalogue form, without the alternate title, natural form)."""
    raw = title.strip()
    forms = {raw, _TRAILING_PAREN.sub("", raw).strip(), natural_title(raw)}
    return sorted((f for f in forms if f), key=len, reverse=True)


def interest_attributes(interest: str) -> tuple[set[str], set[int]]:
    """The genre labels and decades an interest phrase names ("1990s sci-fi comedies" -> {sci-fi, comedy}, {1990})."""
    low = interest.casefold()
    decades = {parse_decade(m) for m in DECADE.finditer(low)}
    genres = set()
    for label, forms in GENRE_FORMS.items():
        if re.search(rf"(?<![\w-])(?:{forms})(?![\w-])", low):
            genres.add(label)
    return genres, decades


def attribute_score(item: Item, other: Item) -> int:
    """How much `other` shares with `item`: one per shared genre, one for the decade, two for the brand."""
    score = len(item_genres(item) & item_genres(other))
    score += item.year is not None and decade_of(item.year) == decade_of(other.year)
    score += 2 * bool(item.brand and other.brand and item.brand.casefold() == other.brand.casefold())
    return score


def select_evidence(item: Item, history: Sequence[Item], n: int) -> tuple[Item, ...]:
    """Up to `n` of the user's own history items that share most with `item`, the most recent first on ties.

    `history` must hold only events before the request time (oldest first); the item itself is never its own
    evidence, and an item sharing only the decade is too weak to cite (every 1990s film shares it).
    """
    if n <= 0:
        return ()
    # attribute_score, unrolled: this runs for every served item over up to 200 history items per request.
    genres, decade = item_genres(item), decade_of(item.year)
    brand = item.brand.casefold() if item.brand else None
    scored = {}
    for pos, other in enumerate(history):
        if other.item_id == item.item_id:
            continue
        shared = len(genres & item_genres(other))
        score = shared + (decade is not None and decade == decade_of(other.year))
        score += 2 * bool(brand and other.brand and brand == other.brand.casefold())
        if shared or score >= 2:  # shares a kind (genre or brand), not only the decade
            scored[other.item_id] = (score, pos, other)  # later pos = more recent
    best = sorted(scored.values(), key=lambda s: (-s[0], -s[1]))[:n]
    return tuple(other for _, _, other in best)


@dataclass(frozen=True)
class ExplainFacts:
    """Everything one explanation may name. `interest` is set only when it matches the item (`build_facts`)."""

    item: Item
    interest: str | None = None
    evidence: tuple[Item, ...] = ()
    domain: Domain = GENERIC
    # Per evidence item, what the user did as a clause ("bought {}", `explain_clause`); () when every one is
    # "liked {}" (the rating words, and every MovieLens explanation as it always was).
    acts: tuple[str, ...] = ()

    @property
    def evidence_ids(self) -> tuple[str, ...]:
        return tuple(e.item_id for e in self.evidence)

    def genres(self) -> set[str]:
        """Genre labels of the item and of every evidence item."""
        return item_genres(self.item).union(*(item_genres(e) for e in self.evidence))

    def years(self) -> set[int]:
        return {y for y in [self.item.year, *(e.year for e in self.evidence)] if y is not None}

    def shared_genres(self) -> list[str]:
        """The item's genres that an evidence item or the interest also has, in the item's order."""
        others = set().union(*(item_genres(e) for e in self.evidence))
        if self.interest:
            others |= interest_attributes(self.interest)[0]
        own = [canonical_genre(g) for g in self.item.genres if g.casefold() != "unknown"]
        return list(dict.fromkeys(g for g in own if g in others))

    def shared_decade(self) -> int | None:
        """The item's decade when an evidence item or the interest is from the same decade."""
        mine = decade_of(self.item.year)
        if mine is None:
            return None
        others = {decade_of(e.year) for e in self.evidence}
        if self.interest:
            others |= interest_attributes(self.interest)[1]
        return mine if mine in others else None


def interest_matches(interest: str, item: Item, evidence: Sequence[Item] = ()) -> bool:
    """True when the interest shares an attribute with the item or a cited evidence item, and names none that
    they all lack.

    "1990s action" does not explain a 1996 comedy: naming it would pin "action" on a comedy.
    """
    genres, decades = interest_attributes(interest)
    have_genres = item_genres(item).union(*(item_genres(e) for e in evidence))
    have_decades = {decade_of(y) for y in [item.year, *(e.year for e in evidence)] if y is not None}
    shared = (genres & have_genres) or (decades & have_decades)
    return bool(shared) and genres <= have_genres and decades <= have_decades


def build_facts(item: Item, interest: str | None, history: Sequence[Item], max_evidence: int,
                domain: Domain = GENERIC, behavior_of: Mapping[str, str] | None = None) -> ExplainFacts:
    """The facts for one served (user, item): evidence from the user's history, the interest only if it matches.

    `behavior_of`: history item id -> the behaviour type it is cited for (its verb: "You bought ..."); None or a
    missing item: "liked"."""
    evidence = select_evidence(item, history, max_evidence)
    keep = interest if interest and interest_matches(interest, item, evidence) else None
    acts = tuple(explain_clause((behavior_of or {}).get(e.item_id)) for e in evidence)
    acts = () if all(a == LIKED_CLAUSE for a in acts) else acts
    return ExplainFacts(item=item, interest=keep, evidence=evidence, domain=domain, acts=acts)


def _evidence_tier(behavior: str | None, vocab: BehaviorVocab) -> int:
    """0: citable first (positive or target types; an item given without a behaviour), 1: only when the user
    has no such event (neutral types such as views, unknown names), 2: never (negative non-target types)."""
    if behavior is None:
        return 0
    if behavior not in vocab.names:
        return 1
    spec = vocab.spec(behavior)
    if spec.kind != "item" or (spec.polarity == "negative" and not spec.is_target):
        return 2
    return 0 if spec.polarity == "positive" or spec.is_target else 1


def citable_history(item_ids: Sequence[str], behaviors: Sequence[str | None],
                    vocab: BehaviorVocab) -> tuple[list[str], dict[str, str]]:
    """The history items an explanation may cite as evidence (oldest first), and the behaviour each is cited for.

    Positive events are preferred: a shop user's carts and purchases, their views only when they have neither;
    skips, returns and dislikes never. An item takes its strongest cited behaviour (purchase over cart). A
    rating log's types are all targets, so every rated item stays citable, as it always was.
    """
    tiers = [_evidence_tier(b, vocab) for b in behaviors]
    best = min((t for t in tiers if t < 2), default=2)
    chosen = [(i, b) for i, b, t in zip(item_ids, behaviors, tiers) if t == best and t < 2]

    def weight(b: str | None) -> float:
        spec = vocab.spec(b) if b in vocab.names else None
        common = COMMON_BEHAVIORS.get(b or "")
        return (spec and spec.weight) or (common and common.weight) or (1.0 if b else 0.0)

    behavior_of: dict[str, str] = {}
    for i, b in chosen:
        if b is not None and (i not in behavior_of or weight(b) > weight(behavior_of[i])):
            behavior_of[i] = b
    return [i for i, _ in chosen], behavior_of


def normalize_interest(interest: str | None) -> str:
    """The table key form of an interest: casefolded, single spaces ("" for none)."""
    return " ".join((interest or "").casefold().split())


def facts_key(interest: str | None, item_id: str, evidence_ids: Iterable[str]) -> tuple[str, str, tuple[str, ...]]:
    """The explanation table key (see the module docstring)."""
    return normalize_interest(interest), str(item_id), tuple(str(e) for e in evidence_ids)


def catalogue_categories(items: Iterable[Item]) -> frozenset[str]:
    """Every category the catalogue knows, casefolded: the check rejects any of them the facts lack."""
    return frozenset(canonical_genre(g) for it in items for g in it.genres if g.strip() and g.casefold() != "unknown")
