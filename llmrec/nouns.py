"""The words prompts use for a dataset's items, users and example tags (rendered from `Dataset.domain`).

For movies the words are exactly the ones the prompts always had ("a movie viewer", "1990s romantic
comedies"): the LoRA adapter was trained on that text, so a MovieLens prompt renders byte-identically. For any
other domain the nouns come from `Domain` and the example interests/tags from the dataset's own vocabulary
(its most frequent item tags), or a neutral phrase when it has too few.
"""

from __future__ import annotations

from llmrec.data.behaviors import BEHAVIOR_VERBS
from llmrec.schema import Domain
from llmrec.vocab import AttributeVocab, is_movie_domain

MOVIE_NOUNS = {
    "item": "movie", "items": "movies", "user": "viewer", "a_user": "a movie viewer", "a_item": "a movie",
    "take": "watch", "takes": "watches", "taken": "watched", "traits": "genres and its release year",
    "interest_examples": '"1990s romantic comedies" or "dark crime thrillers"',
    "tag_examples": '"quirky romantic comedy" or "1970s sci-fi"',
}  # fmt: skip


def behavior_verbs(behavior: str | None) -> dict[str, str]:
    """take / takes / taken for a behaviour type with its own verbs ({} for the rating words and others)."""
    verbs = BEHAVIOR_VERBS.get(behavior or "")
    return dict(zip(("take", "takes", "taken"), verbs[:3])) if verbs else {}


def _a(noun: str) -> str:
    """"an item", "a user": a vowel letter takes "an" unless it sounds like "you" (user, unit, utility)."""
    low = noun.lower()
    vowel = low[:1] in "aeio" or (low[:1] == "u" and not low.startswith(("us", "uni", "ut", "ur")))
    return f"an {noun}" if vowel else f"a {noun}"


def _examples(tags: list[str], fallback: str) -> str:
    return " or ".join(f'"{t}"' for t in tags[:2]) if len(tags) >= 2 else fallback


def prompt_nouns(vocab: AttributeVocab | None = None, domain: Domain | None = None,
                 behavior: str | None = None) -> dict[str, str]:
    """Template variables naming the domain: item/items/user, a_user, a_item, take/takes/taken, traits,
    interest_examples, tag_examples. None (or a movie domain) gives the MovieLens words; `behavior` (the act
    the prompt asks about, e.g. cold start's imagined type) replaces take/takes/taken where it has verbs."""
    domain = domain or (vocab.domain if vocab is not None else None)
    if domain is None or is_movie_domain(domain):
        return {**MOVIE_NOUNS, **behavior_verbs(behavior)}
    examples = list(vocab.example_tags) if vocab is not None else []
    user = domain.user if domain.item == "item" else f"{domain.item} {domain.user}"
    traits = "categories and its release year" if vocab is not None and vocab.decades else "categories"
    return {
        "item": domain.item, "items": domain.items, "user": domain.user, "a_user": _a(user), "a_item": _a(domain.item),
        "take": "pick", "takes": "picks", "taken": "picked", **behavior_verbs(behavior), "traits": traits,
        "interest_examples": _examples(examples[:2], f'"a favourite kind of {domain.items}"'),
        "tag_examples": _examples(examples[2:4] or examples[:2], f'"a kind of {domain.item}"'),
    }  # fmt: skip
