"""RecGPT-style explanations generated in batch from a closed set of facts, checked, served from a table.

Each served (user, item) becomes `ExplainFacts` (`explain.facts.build_facts`): the item's title, year,
genres, description and brand, one to three of the user's own earlier items that share attributes with it
(the evidence), and the user's interest only when it matches the item. One chat per distinct facts
(`prompts/explain.jinja`), decoded under the compact JSON schema {"e": sentence}, is validated with the same
pydantic model and then by the closed-world check (`explain.check.check_explanation`). Invalid or failing
answers are regenerated `config.retries` times at `retry_temperature`; what still fails is replaced by a
template built from the same facts and marked `flagged=True`, so a reader can always tell the two apart.

Generation runs through the shared `llmrec.llm.structured.generate_validated` (the closed-world check is its
`check`, the template its fallback).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, StringConstraints, create_model

from explain.check import check_explanation, sensitive_terms
from explain.facts import (
    GENERIC,
    ExplainFacts,
    canonical_genre,
    catalogue_categories,
    decade_of,
    item_genres,
    natural_title,
    normalize_interest,
)
from explain.table import PROMPT, TABLE_SCHEMA
from llmrec.config import ExplainConfig
from llmrec.data.behaviors import LIKED_CLAUSE
from llmrec.jobs import SHARD_STATS
from llmrec.llm import LLMBackend, Messages
from llmrec.llm.prompts import render_prompt
from llmrec.llm.structured import (
    GenerationSettings,
    generate_validated,
    repair_unconstrained,
)
from llmrec.schema import Domain, Explanation, Item

ABOUT_WORDS = 25  # description words in the prompt: enough to ground, small enough for CPU prefill


@lru_cache(maxsize=8)
def explain_wire(max_chars: int) -> type[BaseModel]:
    """The answer model {"e": sentence}; its JSON schema constrains decoding."""
    text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=max_chars)]
    return create_model("WireExplanation", __config__=ConfigDict(extra="forbid", frozen=True), e=(text, ...))


def _genre_labels(item: Item, n: int) -> list[str]:
    return [canonical_genre(g) for g in item.genres if g.strip() and g.casefold() != "unknown"][:n]


def _named(item: Item) -> str:
    return f"{natural_title(item.title)} ({item.year})" if item.year is not None else natural_title(item.title)


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def did_phrase(facts: ExplainFacts) -> str:
    """What the user did with the evidence items, e.g. "liked A and B" or "bought A and added B to your cart"
    (one clause per behaviour, in the evidence's order)."""
    acts = facts.acts or (LIKED_CLAUSE,) * len(facts.evidence)
    grouped: dict[str, list[str]] = {}
    for act, e in zip(acts, facts.evidence):
        grouped.setdefault(act, []).append(_named(e))
    return _and([act.format(_and(names)) for act, names in grouped.items()])


def _evidence_list(facts: ExplainFacts) -> str:
    """The prompt's evidence: "A (1977), B (1980)"; with behaviours, each says what the user did ("A (bought it)")."""
    if not facts.acts:
        return ", ".join(_named(e) for e in facts.evidence)
    return ", ".join(f"{_named(e)} ({act.format('it')})" for e, act in zip(facts.evidence, facts.acts))


def shared_phrase(facts: ExplainFacts) -> str:
    """What the item shares with the evidence / interest, e.g. "sci-fi, action, 1990s" ("none" if nothing)."""
    decade = facts.shared_decade()
    parts = facts.shared_genres() + ([f"{decade}s"] if decade is not None else [])
    same_brand = facts.item.brand and any(e.brand == facts.item.brand for e in facts.evidence)
    return ", ".join(parts + ([facts.item.brand] if same_brand else [])) or "none"


def _prompt_genres(facts: ExplainFacts, n: int) -> list[str]:
    """The item's genres as the catalogue names them, the shared ones first so `n` never hides them."""
    shared = set(facts.shared_genres())
    own = [g for g in facts.item.genres if g.strip() and g.casefold() != "unknown"]
    return sorted(own, key=lambda g: canonical_genre(g) not in shared)[:n]


def explain_messages(facts: ExplainFacts, config: ExplainConfig) -> Messages:
    """The chat for one set of facts."""
    item = facts.item
    about = " ".join((item.text or "").split()[:ABOUT_WORDS])
    return render_prompt(PROMPT, item=facts.domain.item, user=facts.domain.user, title=natural_title(item.title),
                         year=item.year or "", genres=", ".join(_prompt_genres(facts, config.max_genres)) or "not given",
                         brand=item.brand or "", about=about, liked=_evidence_list(facts),
                         interest=facts.interest or "", shared=shared_phrase(facts))


def template_text(facts: ExplainFacts, config: ExplainConfig) -> str:
    """A plain sentence from the facts alone; it always passes `check_explanation`. Long titles: it names
    fewer evidence items (the last ones first) until the sentence fits `config.max_chars`."""
    for n in range(len(facts.evidence), 0, -1):
        text = _template_text(replace(facts, evidence=facts.evidence[:n], acts=facts.acts[:n]), config)
        if len(text) <= config.max_chars:
            return text
    return _template_text(replace(facts, evidence=(), acts=()), config)


def _template_text(facts: ExplainFacts, config: ExplainConfig) -> str:
    item, noun = facts.item, facts.domain.item
    if facts.evidence:
        theirs = set().union(*(item_genres(e) for e in facts.evidence))
        shared = [g for g in _genre_labels(item, len(item.genres)) if g in theirs][: config.max_genres]
        brand = item.brand if any(e.brand == item.brand for e in facts.evidence) and item.brand else None
        what = f"also {_and(shared)}" if shared else f"also from {brand}" if brand else f"another {noun}"
        return f"You {did_phrase(facts)}; {_named(item)} is {what}."
    genres = _genre_labels(item, config.max_genres)
    kind = f"{_and(genres)} {noun}" if genres else noun
    article = "an" if kind[0] in "aeiou" else "a"
    if facts.interest and not sensitive_terms(facts.interest, facts):  # a mined interest may name one; never echo it
        return f"{_named(item)} is {article} {kind}, matching your interest in {facts.interest}."
    decade = decade_of(item.year)
    when = f" from the {decade}s" if decade is not None else ""
    return f"{_named(item)} is {article} {kind}{when}, recommended for you."


def template_explanation(facts: ExplainFacts, config: ExplainConfig) -> Explanation:
    """The flagged stand-in: the template sentence under the facts' table key."""
    return Explanation(interest=normalize_interest(facts.interest), item_id=facts.item.item_id,
                       evidence=facts.evidence_ids, text=template_text(facts, config), faithful=True, flagged=True)


@dataclass
class ExplainStats:
    n_pairs: int = 0  # distinct facts explained
    faithful_first: int = 0  # valid and passing the check at the first attempt
    regenerated: int = 0  # facts sent back to the model at least once
    llm_final: int = 0  # facts whose stored explanation is the model's
    templated: int = 0  # facts that got the flagged template
    invalid: int = 0  # answers (all attempts) that failed JSON validation
    unfaithful: int = 0  # answers (all attempts) that were valid but failed the check
    n_output_tokens: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # a few failure reasons, for the report

    @property
    def faithful_share(self) -> float:
        """Share of facts whose first answer was valid and passed the check."""
        return self.faithful_first / self.n_pairs if self.n_pairs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faithful_share": self.faithful_share}


def generation_settings(config: ExplainConfig, adapter: str | None) -> GenerationSettings:
    """The shared validated-generation knobs of this stage."""
    return GenerationSettings(max_tokens=config.max_tokens, temperature=config.temperature,
                              retry_temperature=config.retry_temperature, retries=config.retries,
                              batch_size=config.batch_size, adapter=adapter)


def explain_items(facts: Sequence[ExplainFacts], backend: LLMBackend, config: ExplainConfig,
                  vocabulary: frozenset[str] = frozenset(), adapter: str | None = None,
                  ) -> tuple[list[Explanation], ExplainStats]:
    """One explanation per distinct facts key, in first-seen order, with generation stats.

    `vocabulary`: the catalogue's categories for the check (default: those of the given items).
    """
    t0 = time.perf_counter()
    seen: dict[tuple, ExplainFacts] = {}
    for f in facts:
        seen.setdefault((normalize_interest(f.interest), f.item.item_id, f.evidence_ids), f)
    todo = list(seen.values())
    vocabulary = vocabulary or catalogue_categories(it for f in todo for it in (f.item, *f.evidence))

    def check(answer: BaseModel, i: int) -> str | None:
        return check_explanation(answer.e, todo[i], vocabulary, config.max_chars)

    results, gen = generate_validated(backend, [explain_messages(f, config) for f in todo],
                                      schema=explain_wire(config.max_chars), check=check, fallback=lambda i: None,
                                      config=generation_settings(config, adapter), repair=repair_unconstrained)
    out = [template_explanation(f, config) if r.fallback else
           Explanation(interest=normalize_interest(f.interest), item_id=f.item.item_id, evidence=f.evidence_ids,
                       text=r.value.e, faithful=True)
           for f, r in zip(todo, results)]
    stats = ExplainStats(n_pairs=len(todo), faithful_first=gen.valid_first,
                         regenerated=(len(todo) - gen.valid_first) if config.retries else 0,
                         llm_final=gen.valid_final, templated=gen.fallbacks, invalid=gen.parse_failures,
                         unfaithful=gen.semantic_failures, n_output_tokens=gen.output_tokens,
                         seconds=time.perf_counter() - t0,
                         examples=[f"#{e['index']} {e['kind']}: {e['reason']}: {e['raw'][:80]!r}"
                                   for e in gen.examples[:5]])
    return out, stats


# --- As a batch job (llmrec.jobs.run_sharded with key_column="pair_key") ------------------------

KEY_SEP = "\x1f"  # unit separator: never in an interest or an id
IDS_SEP = "\x1e"


def pair_key(facts: ExplainFacts) -> str:
    """One job key per facts: "interest<US>item_id<US>evidence ids joined by <RS>"."""
    return KEY_SEP.join([normalize_interest(facts.interest), facts.item.item_id, IDS_SEP.join(facts.evidence_ids)])


def facts_from_key(key: str, items: dict[str, Item], domain: Domain) -> ExplainFacts:
    """The facts a job key names; every id must be in the catalogue."""
    parts = key.split(KEY_SEP)
    if len(parts) != 3:
        raise KeyError(f"job key {key!r}: expected interest, item id and evidence ids")
    interest, item_id, evidence = parts
    ids = [item_id, *filter(None, evidence.split(IDS_SEP))]
    missing = [i for i in ids if i not in items]
    if missing:
        raise KeyError(f"job key {key!r}: item(s) {missing} not in the catalogue")
    return ExplainFacts(item=items[item_id], interest=interest or None, evidence=tuple(items[i] for i in ids[1:]),
                        domain=domain)


def make_explain_process(items: dict[str, Item], backend: LLMBackend, config: ExplainConfig, domain: Domain = GENERIC,
                         adapter: str | None = None) -> Callable[[list[str]], pd.DataFrame]:
    """A `run_sharded` process: job keys of one shard -> one row per key, plus the `pair_key` column and the
    shard's `ExplainStats` as JSON (`llmrec.jobs.SHARD_STATS`; summed by `llmrec.jobs.sum_shard_stats`)."""
    vocabulary = catalogue_categories(items.values())

    def process(keys: list[str]) -> pd.DataFrame:
        facts = [facts_from_key(k, items, domain) for k in keys]
        explanations, stats = explain_items(facts, backend, config, vocabulary, adapter=adapter)
        frame = pd.DataFrame([{**e.model_dump(), "evidence": list(e.evidence)} for e in explanations],
                             columns=TABLE_SCHEMA.names)
        frame.insert(0, "pair_key", [pair_key(f) for f in facts])
        frame[SHARD_STATS] = json.dumps(stats.to_dict())
        return frame

    return process
