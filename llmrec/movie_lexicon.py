"""The MovieLens lexicon: the 18 genres and the tag words that name them ("funny" -> comedy).

Used by `llmrec.vocab` when a dataset's domain is movies; the vocabulary adds each genre's own name and
plurals ("comedies", "westerns"), decades ("90s", "nineties") and splits hyphenated words
("action-adventure" -> action, adventure).
"""

from __future__ import annotations

# Canonical genre attributes (ML-100K genres, lowercased; "unknown" is not an attribute).
GENRES = (
    "action", "adventure", "animation", "children's", "comedy", "crime", "documentary", "drama", "fantasy",
    "film-noir", "horror", "musical", "mystery", "romance", "sci-fi", "thriller", "war", "western",
)  # fmt: skip

# Word -> attribute. Genre names and their plurals are added by llmrec.vocab.
WORDS: dict[str, str] = {
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
PHRASES = {("science", "fiction"): "sci-fi", ("film", "noir"): "film-noir"}
# Which genre reads as the noun ("core") of a two-genre tag: earlier = more core-like.
CORE_ORDER = (
    "drama", "comedy", "thriller", "children's", "western", "musical", "documentary", "horror", "mystery",
    "war", "crime", "adventure", "action", "sci-fi", "fantasy", "romance", "animation", "film-noir",
)  # fmt: skip
MODIFIER_FORM = {"romance": "romantic", "animation": "animated", "film-noir": "noir"}
