"""360Brew-style re-ranking: (profile + past interactions + one candidate) -> "Yes"/"No", scored by the LLM.

Each (user, candidate) pair is one prompt (prompts/rank.jinja); its score is log P("Yes") - log P("No") of
the assistant's first token (`backend.score_choices`), a log-odds that is comparable across candidates of
the same user. No text is generated, so there is nothing to validate: the score is one forward pass. All
pairs of all users are flattened and scored in batches of `RerankConfig.batch_size`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from llmrec.config import RerankConfig
from llmrec.llm import LLMBackend, Messages
from llmrec.llm.prompts import render_prompt
from llmrec.nouns import prompt_nouns
from llmrec.schema import InterestProfile, Item, Narrative
from llmrec.vocab import AttributeVocab

PROMPTS = ("rank",)
CHOICES = ("Yes", "No")


def describe_item(item: Item) -> str:
    """"Toy Story (1995; Animation, Children's, Comedy)": the candidate as the prompt shows it."""
    details = "; ".join(x for x in (str(item.year) if item.year else "", ", ".join(item.genres)) if x)
    base = item.title.rsplit(" (", 1)[0] if item.year and item.title.endswith(f"({item.year})") else item.title
    return f"{base} ({details})" if details else base


def clip_narrative(text: str, max_chars: int) -> str:
    """The narrative's leading lines within `max_chars` (whole lines; at least the first line, cut)."""
    out, used = [], 0
    for line in text.splitlines():
        if used + len(line) + 1 > max_chars:
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out) if out else text[:max_chars]


def rank_messages(narrative_text: str, candidate: Item, interests: Sequence[str], config: RerankConfig,
                  attrs: AttributeVocab | None = None) -> Messages:
    """The ranking chat for one (user, candidate) pair; `attrs` names the domain (None: MovieLens words)."""
    return render_prompt("rank", narrative=clip_narrative(narrative_text, config.max_narrative_chars),
                         interests=list(interests)[: config.max_interests], candidate=describe_item(candidate),
                         **prompt_nouns(attrs))


def score_candidates(
    narratives: Sequence[Narrative],
    candidates: Sequence[Sequence[Item]],
    backend: LLMBackend,
    config: RerankConfig | None = None,
    profiles: Mapping[str, InterestProfile] | None = None,
    adapter: str | None = None,
    attrs: AttributeVocab | None = None,
) -> list[list[float]]:
    """log P(Yes) - log P(No) for each user's candidates, in input order."""
    config = config or RerankConfig()
    if len(narratives) != len(candidates):
        raise ValueError(f"{len(narratives)} narratives but {len(candidates)} candidate lists")
    prompts: list[Messages] = []
    for n, items in zip(narratives, candidates):
        profile = (profiles or {}).get(n.user_id)
        names = [i.name for i in profile.interests] if profile else []
        prompts += [rank_messages(n.text, item, names, config, attrs) for item in items]
    flat: list[float] = []
    for start in range(0, len(prompts), config.batch_size):
        for lp_yes, lp_no in backend.score_choices(prompts[start : start + config.batch_size], list(CHOICES),
                                                   adapter=adapter):
            flat.append(lp_yes - lp_no)
    out, pos = [], 0
    for items in candidates:
        out.append(flat[pos : pos + len(items)])
        pos += len(items)
    return out


def rerank(
    narratives: Sequence[Narrative],
    candidates: Sequence[Sequence[Item]],
    backend: LLMBackend,
    k: int,
    config: RerankConfig | None = None,
    profiles: Mapping[str, InterestProfile] | None = None,
    adapter: str | None = None,
    attrs: AttributeVocab | None = None,
) -> list[list[tuple[Item, float]]]:
    """Each user's top-k candidates by the LLM's Yes/No log-odds; ties keep the retrieval order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = score_candidates(narratives, candidates, backend, config, profiles, adapter, attrs)
    ranked = []
    for items, s in zip(candidates, scores):
        order = sorted(range(len(items)), key=lambda j: -s[j])  # stable: ties keep input order
        ranked.append([(items[j], s[j]) for j in order[:k]])
    return ranked
