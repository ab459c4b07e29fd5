"""The closed-world check: an explanation may name only what its facts hold (pure functions, no model).

A text fails, with the reason, when it
- is too short or too long, or repeats itself ("action, action, action");
- does not name the item by its own title (the MovieLens "Title, The" form may be written "The Title");
- names a year, decade or genre/category that neither the item nor a cited evidence item has (an interest
  is only in the facts when it matches the item, see `explain.facts.interest_matches`);
- dates the item wrongly: the first year or decade within a few words after the item's title ("Eraser is a
  1995 action thriller", "Cape Fear (1990)") is not the item's own, even if an evidence item has it;
- names a person, place or other title: a capitalised word that is not a sentence start and not a word of
  the facts, or a run of two or more capitalised words that is not one of the fact phrases
  ("Michele Romy" is made of title words but is not the title);
- names sexuality, ethnicity, religion or health, unless the item's own facts do (safety: such words about
  a user or an item are never the product's to invent).
"""

from __future__ import annotations

import re

from explain.facts import (
    DECADE,
    GENRE_FORMS,
    YEAR,
    ExplainFacts,
    canonical_genre,
    decade_of,
    parse_decade,
    title_forms,
)
from llmrec.data.behaviors import BEHAVIOR_VERBS

MIN_WORDS = 6  # fewer words is a label, not an explanation
MAX_REPEATS = 2  # a content word named three times is padding
_MASK = " \u00a7 "  # stands in for a fact phrase (a title, the brand), so its words are never re-checked
_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\"\u201c(])\s*$")
_INNER_CAPITAL = re.compile(r"[a-z][A-Z]|-[A-Z]")
_STOP = frozenset(["a", "an", "and", "the", "of", "for", "to", "in", "on", "is", "it", "its", "this", "that", "with", "your", "you", "from", "also", "as", "are", "be", "by", "like", "liked", "bought", "purchased", "viewed", "clicked", "searched", "more", "another", "just", "movie", "film", "item"]).union(
    # The explanations' behaviour verbs ("You bought ...", "added ... to your cart") are function words here.
    w for verbs in BEHAVIOR_VERBS.values() for form in verbs for w in form.replace("{}", " ").split())
SENSITIVE: dict[str, str] = {
    "sexuality": r"lesbians?|gays?|bisexual\w*|homosexual\w*|heterosexual\w*|transgender\w*|queer\w*|sexuality",
    "ethnicity": r"blackness|whiteness|ethnic\w*|racial\w*|racis\w*|african[- ]americans?|hispanics?|latin[oa]s?|"
                 r"caucasians?|(?:black|white|asian|jewish) (?:man|woman|men|women|girl|boy|lesbian|family|people|"
                 r"person|world)",
    "religion": r"religio\w*|christian\w*|muslims?|islam\w*|jewish|jews|catholic\w*|hindu\w*|buddhis\w*|atheis\w*",
    "health": r"diseases?|illness\w*|cancer|hiv|aids|disabilit\w*|disabled|depression|pregnan\w*|autis\w*|"
              r"diabet\w*|mentally ill",
}
_SENSITIVE_RE = {kind: re.compile(rf"\b(?:{rx})\b") for kind, rx in SENSITIVE.items()}


def _fact_phrases(facts: ExplainFacts) -> list[str]:
    """Phrases masked before the word checks: every form of every title, and the brands; longest first."""
    phrases = [f for it in (facts.item, *facts.evidence) for f in title_forms(it.title)]
    phrases += [it.brand for it in (facts.item, *facts.evidence) if it.brand]
    return sorted(set(phrases), key=len, reverse=True)


def _mask(text: str, phrases: list[str]) -> str:
    for phrase in phrases:
        text = re.sub(rf"(?<!\w){re.escape(phrase)}(?!\w)", _MASK, text, flags=re.IGNORECASE)
    return text


def _fact_words(facts: ExplainFacts) -> set[str]:
    """Casefolded words a capitalised word may be: words of titles, brands, genres, description, interest."""
    parts = [facts.interest or "", facts.domain.item, facts.domain.items, facts.domain.user]
    for it in (facts.item, *facts.evidence):
        parts += [it.title, it.brand or "", " ".join(it.genres)]
    parts.append(facts.item.text or "")
    return {w.casefold() for p in parts for w in _WORD.findall(p)}


def named_genres(text: str, vocabulary: frozenset[str] = frozenset()) -> set[str]:
    """Genre labels a text names (lexicon forms), plus catalogue categories outside the lexicon, verbatim."""
    low = text.casefold()
    found = {label for label, forms in GENRE_FORMS.items()
             if re.search(rf"(?<![\w-])(?:{forms})(?![\w-])", low)}
    found |= {c for c in vocabulary if c not in GENRE_FORMS and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", low)}
    return found


def repetition(text: str) -> str | None:
    """A reason when a word or word pair is repeated back to back, or a content word comes 3+ times."""
    words = [w.casefold() for w in _WORD.findall(text)]
    for n in (1, 2):
        for i in range(len(words) - 2 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n] and not set(words[i : i + n]) <= _STOP:
                return f"repeats {' '.join(words[i : i + n])!r}"
    counts: dict[str, int] = {}
    for w in words:
        if w not in _STOP and len(w) > 3:
            counts[w] = counts.get(w, 0) + 1
            if counts[w] > MAX_REPEATS:
                return f"repeats {w!r} {counts[w]} times"
    return None


def length_problem(text: str, max_chars: int) -> str | None:
    n = len(text.split())
    if n < MIN_WORDS:
        return f"too short ({n} words, at least {MIN_WORDS})"
    if len(text) > max_chars:
        return f"too long ({len(text)} characters, at most {max_chars})"
    return None


def sensitive_terms(text: str, facts: ExplainFacts) -> list[str]:
    """Sensitive words in the text that the item's own facts (title, genres, description, brand) do not name."""
    own = " ".join([facts.item.title, " ".join(facts.item.genres), facts.item.text or "", facts.item.brand or ""])
    own = own.casefold()
    # The user's own history titles are facts too ("The Gay Divorcee"): masked, never read as a claim.
    low = _mask(text, [f for it in facts.evidence for f in title_forms(it.title)]).casefold()
    return [f"{kind}: {m.group(0)!r}" for kind, rx in _SENSITIVE_RE.items() for m in rx.finditer(low)
            if m.group(0) not in own]


def invented_names(masked: str, facts: ExplainFacts) -> list[str]:
    """Capitalised words or runs in the masked text that the facts do not hold (people, places, other titles)."""
    allowed = _fact_words(facts)
    runs: list[list[tuple[str, bool]]] = []
    last_end = None
    for m in _WORD.finditer(masked):
        word = m.group(0)
        if not word[0].isupper():
            last_end = None
            continue
        start = bool(_SENTENCE_START.search(masked[: m.start()]))
        if last_end is not None and masked[last_end : m.start()].strip() == "":
            runs[-1].append((word, start))
        else:
            runs.append([(word, start)])
        last_end = m.end()
    bad = []
    for run in runs:
        words = [w for n, (w, start) in enumerate(run) if not (n == 0 and start and not _INNER_CAPITAL.search(w))]
        if not words:
            continue
        genre_words = [w for w in words if canonical_genre(w) in GENRE_FORMS]
        unknown = [w for w in words if w.casefold() not in allowed and w not in genre_words]
        if unknown or (len(words) > 1 and len(genre_words) < len(words)):
            bad.append(" ".join(w for w, _ in run))
    return bad


DATE_WINDOW = 4  # words after the item's title in which a year or decade is read as the item's own


def misdated_item(text: str, facts: ExplainFacts) -> str | None:
    """The reason when a year or decade right after the item's title is not the item's ("Eraser is a 1995
    action thriller" for a 1996 film). Only the first date within `DATE_WINDOW` words of the title, in the
    same clause and before any evidence title, is read as the item's."""
    year = facts.item.year
    if year is None:
        return None
    own = {f.casefold() for f in title_forms(facts.item.title)}
    evidence = sorted({f for it in facts.evidence for f in title_forms(it.title) if f.casefold() not in own},
                      key=len, reverse=True)
    # Evidence titles are masked first, so an item title inside one ("The Godfather" in "The Godfather: Part II
    # (1974)") is not read as the item.
    text = _mask(text, evidence)
    for form in title_forms(facts.item.title):
        for m in re.finditer(rf"(?<!\w){re.escape(form)}(?!\w)", text, flags=re.IGNORECASE):
            after = text[m.end():]
            clause = re.split(rf"[;.!?{_MASK.strip()}]", after, maxsplit=1)[0]
            window = " ".join(clause.split()[:DATE_WINDOW + 1])
            found = sorted([(y.start(), int(y.group(1)), "year") for y in YEAR.finditer(window)]
                           + [(d.start(), parse_decade(d), "decade") for d in DECADE.finditer(window.casefold())])
            if not found:
                continue
            _, value, kind = found[0]
            if (kind == "year" and value != year) or (kind == "decade" and value != decade_of(year)):
                named = str(value) if kind == "year" else f"{value}s"
                return f"dates the item {named}; {facts.item.title!r} is from {year}"
    return None


def check_explanation(text: str, facts: ExplainFacts, vocabulary: frozenset[str] = frozenset(),
                      max_chars: int = 160) -> str | None:
    """None when `text` names only what `facts` hold and reads as one clean sentence; else the reason it fails.

    `vocabulary`: the catalogue's categories (`explain.facts.catalogue_categories`), so categories outside the
    built-in genre lexicon are caught too.
    """
    problem = length_problem(text, max_chars)
    if problem:
        return problem
    low = text.casefold()
    if not any(form.casefold() in low for form in title_forms(facts.item.title)):
        return f"does not name the item by its title {facts.item.title!r}"
    sensitive = sensitive_terms(text, facts)
    if sensitive:
        return f"names a personal attribute not in the item's facts ({', '.join(sensitive)})"
    masked = _mask(text, _fact_phrases(facts))
    problem = repetition(masked)  # on the masked text: a title's words are not the text repeating itself
    if problem:
        return problem
    problem = misdated_item(text, facts)
    if problem:
        return problem
    years = {int(y) for y in YEAR.findall(masked)} - facts.years()
    if years:
        return f"names year(s) {sorted(years)} not in the facts {sorted(facts.years())}"
    decades = {parse_decade(m) for m in DECADE.finditer(masked.casefold())}
    extra_decades = decades - {decade_of(y) for y in facts.years()}
    if extra_decades:
        return f"names decade(s) {sorted(f'{d}s' for d in extra_decades)} not in the facts"
    genres = named_genres(masked, vocabulary) - facts.genres()
    if genres:
        return f"names {sorted(genres)}, which neither the item nor its evidence has"
    names = invented_names(masked, facts)
    if names:
        return f"names {names}, not in the facts (no people, places or other titles)"
    return None


def fluency_problem(text: str, facts: ExplainFacts, max_chars: int = 160) -> str | None:
    """The fluency part of the check alone (length and repetition), for the rubric."""
    return length_problem(text, max_chars) or repetition(_mask(text, _fact_phrases(facts)))
