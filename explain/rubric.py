"""The explanation rubric (benchmarks/explanations.py): four yes/no judgements per served explanation.

- factual: passes the closed-world check (`explain.check.check_explanation`);
- relevant: names the evidence (a cited history item) or an attribute the item shares with it or the interest;
- specific: names a history item or a specific attribute (a genre, the brand), not only a decade or year;
- fluent: no repetition and within length (`explain.check.fluency_problem`).
"""

from __future__ import annotations

import re

from explain.check import check_explanation, fluency_problem, named_genres
from explain.facts import DECADE, ExplainFacts, item_genres, parse_decade, title_forms

RUBRIC = ("factual", "relevant", "specific", "fluent")


def names_any(text: str, phrases: list[str]) -> bool:
    low = text.casefold()
    return any(re.search(rf"(?<!\w){re.escape(p.casefold())}(?!\w)", low) for p in phrases if p)


def _named_evidence(text: str, facts: ExplainFacts) -> bool:
    return names_any(text, [f for e in facts.evidence for f in title_forms(e.title)])


def _without_titles(text: str, facts: ExplainFacts) -> str:
    """The text with every title removed, so "Star Wars" does not count as naming the genre war."""
    for form in sorted((f for it in (facts.item, *facts.evidence) for f in title_forms(it.title)), key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(form)}(?!\w)", " ", text, flags=re.IGNORECASE)
    return text


def judge(text: str, facts: ExplainFacts, vocabulary: frozenset[str] = frozenset(),
          max_chars: int = 160) -> dict[str, bool]:
    """The rubric's four judgements for one explanation of `facts`."""
    rest = _without_titles(text, facts)
    genres = named_genres(rest, vocabulary) & item_genres(facts.item)
    decades = {parse_decade(m) for m in DECADE.finditer(rest.casefold())}
    brand = bool(facts.item.brand) and names_any(rest, [facts.item.brand])
    same_brand = brand and any(e.brand == facts.item.brand for e in facts.evidence)
    shared = bool(set(facts.shared_genres()) & genres) or facts.shared_decade() in decades or same_brand
    evidence = _named_evidence(text, facts)
    return {
        "factual": check_explanation(text, facts, vocabulary, max_chars) is None,
        "relevant": evidence or shared,
        "specific": evidence or bool(genres) or brand,
        "fluent": fluency_problem(text, facts, max_chars) is None,
    }
