"""The attribute vocabulary of one dataset: which attributes items carry and which tag words name them.

An item's *attributes* are lowercase strings taken from whatever the dataset has:

    categories / genres   normalised names ("comedy", "arts, music & photography"); a category carried by more
                          than `VocabConfig.max_category_share` of the items (a root such as "magazine
                          subscriptions") says nothing and is dropped; "unknown" is never an attribute
    brand / publisher     "brand:<name>" ("brand:conde nast")
    release decade        "1990s", when the item has a year
    keywords              salient words of title + text (TF-IDF: words in >= min_df items and <= max_df share,
                          stop words removed, the item's top `keywords_per_item` by tf * idf), the word itself

The *lexicon* maps tag words and phrases onto attributes: each attribute's own words and simple plurals, the
full category and brand names as phrases, and, for a movie domain, the MovieLens synonym table of
`llmrec.movie_lexicon` ("funny" -> comedy, "90s" -> 1990s, "science fiction" -> sci-fi). The vocabulary is
self-describing JSON (`save_vocabulary` / `load_vocabulary`), stored with the recommender folder, so a
served model reads tags exactly as it was trained.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

from llmrec.config import VocabConfig
from llmrec.errors import DataError
from llmrec.movie_lexicon import CORE_ORDER, GENRES, MODIFIER_FORM, PHRASES, WORDS
from llmrec.schema import Domain, Item

FORMAT = "llmrec.attribute-vocab/1"
FILENAME = "vocab.json"
N_EXAMPLE_TAGS = 4
NOT_ATTRIBUTES = frozenset({"unknown", "", "other", "misc", "miscellaneous"})
_TOKEN = re.compile(r"[^\W\d_][\w'\-]{2,}")
_HTML_TAG = re.compile(r"<[^>]*>")
# sklearn's English stop words plus words that describe any catalogue rather than one item.
_EXTRA_STOP = frozenset({"item", "items", "product", "products", "new", "issue", "issues", "subscription",
                         "subscriptions", "magazine", "magazines", "year", "years", "page", "pages"})


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS  # only here: sklearn is slow to import

    return frozenset(ENGLISH_STOP_WORDS) | _EXTRA_STOP


def normalise(name: str) -> str:
    """Lowercase, one space between words, no surrounding punctuation: "  Arts,  Music " -> "arts, music"."""
    return " ".join(html.unescape(name).lower().replace("\u2019", "'").split()).strip(" .,;:")


def tag_words(text: str) -> list[str]:
    """A tag's words as the lexicon reads them ("/" and "&" separate words, case folded)."""
    return text.lower().replace("\u2019", "'").replace("/", " ").replace("&", " ").split()


def _phrase_key(words: Sequence[str]) -> str:
    return " ".join(w.strip(".,;:") for w in words)


def plurals(word: str) -> list[str]:
    """Simple English plurals of a word: story -> stories, box -> boxes, comedy -> comedies, war -> wars."""
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return [word[:-1] + "ies", word + "s"]
    if word.endswith(("s", "x", "ch", "sh")):
        return [word + "es"]
    return [word + "s"]


def decade_of(year: int) -> str:
    """1994 -> "1990s"."""
    return f"{year // 10 * 10}s"


@dataclass(frozen=True)
class AttributeVocab:
    """One dataset's attributes and tag lexicon; equality ignores the memos (per item, per tag)."""

    domain: Domain
    config: VocabConfig
    categories: tuple[str, ...]  # kept category attributes, most noun-like ("core") first
    brands: tuple[str, ...]  # normalised brand names (attribute "brand:<name>")
    decades: bool  # whether years give a decade attribute (and tag words such as "90s" name one)
    keyword_idf: dict[str, float]  # keyword -> idf; empty when keywords are off
    lexicon: dict[str, str]  # tag word or space-joined phrase -> attribute
    modifier_form: dict[str, str]  # attribute -> its adjective when it modifies a core ("romance" -> "romantic")
    example_tags: tuple[str, ...] = ()  # the catalogue's most frequent item tags, shown as examples in prompts
    _memo: dict = field(default_factory=dict, compare=False, repr=False)
    _tag_memo: dict = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def max_phrase(self) -> int:
        return max((k.count(" ") + 1 for k in self.lexicon), default=1)

    def item_attributes(self, item: Item) -> frozenset[str]:
        """The item's attributes: kept categories, brand, decade, top keywords (memoised per item)."""
        if item not in self._memo:
            self._memo[item] = frozenset(self._category_attributes(item) + self._other_attributes(item))
        return self._memo[item]

    def _category_attributes(self, item: Item) -> list[str]:
        own = {normalise(g) for g in item.genres}
        return [c for c in self.categories if c in own]

    def _other_attributes(self, item: Item) -> list[str]:
        attrs = []
        if item.brand and normalise(item.brand) in self.brands:
            attrs.append(f"brand:{normalise(item.brand)}")
        if self.decades and item.year is not None:
            attrs.append(decade_of(item.year))
        return attrs + self.item_keywords(item)

    def item_keywords(self, item: Item) -> list[str]:
        """The item's top keywords by tf * idf (ties alphabetical); [] when keywords are off."""
        if not self.keyword_idf:
            return []
        counts = Counter(t for t in _tokens(f"{item.title} {item.text or ''}") if t in self.keyword_idf)
        ranked = sorted(counts, key=lambda t: (-counts[t] * self.keyword_idf[t], t))
        return ranked[: self.config.keywords_per_item]

    def tag_attributes(self, tag: str) -> frozenset[str] | None:
        """The attributes a tag names, longest lexicon phrase first; None when it names none (memoised)."""
        if tag not in self._tag_memo:
            self._tag_memo[tag] = self._read_tag(tag)
        return self._tag_memo[tag]

    def _read_tag(self, tag: str) -> frozenset[str] | None:
        words = tag_words(tag)
        attrs: set[str] = set()
        i, longest = 0, self.max_phrase
        while i < len(words):
            for n in range(min(longest, len(words) - i), 1, -1):
                key = _phrase_key(words[i : i + n])
                if key in self.lexicon:
                    attrs.add(self.lexicon[key])
                    i += n
                    break
            else:
                attrs.update(self._word_attributes(words[i]))
                i += 1
        return frozenset(attrs) or None

    def _word_attributes(self, word: str) -> list[str]:
        word = word.strip(".,;:!?\"()[]")
        if not word:
            return []
        if word in self.lexicon:
            return [self.lexicon[word]]
        decade = word_decade(word) if self.decades else None
        if decade is not None:
            return [decade]
        if "-" in word:
            return [a for part in word.split("-") for a in self._word_attributes(part)]
        return []

    def item_tags(self, item: Item) -> list[str]:
        """"modifier + core" tags describing the item; every tag's attributes are a subset of the item's.

        Decade + each category ("1990s comedy"), each category pair with the more core-like category as
        core ("romantic comedy"), then brand and keywords as modifiers of the item's first category
        ("conde nast fashion", "knitting crafts"). A category-less item gets "1990s <item noun>"; an item
        with nothing else gets its first category, brand or keyword alone.
        """
        attrs = self.item_attributes(item)
        cats = [c for c in self.categories if c in attrs]
        decade = decade_of(item.year) if self.decades and item.year is not None else None
        tags: list[str] = []
        short = [self.short_form(c) for c in cats]
        if decade is not None:
            tags += [f"{decade} {c}" for c in short] or [f"{decade} {_noun(self.domain)}"]
        for i, core in enumerate(short):
            tags += [f"{self.modifier_form.get(cats[j], short[j])} {core}" for j in range(i + 1, len(cats))]
        extras = [a.removeprefix("brand:") for a in sorted(attrs) if a.startswith("brand:")]
        extras += self.item_keywords(item)
        tags += [f"{x} {short[0]}" for x in extras] if cats else extras
        if not tags and cats:
            tags = short[:1]
        return tags

    def short_form(self, category: str) -> str:
        """The first word of a category that the lexicon reads as it ("cooking, food & wine" -> "cooking")."""
        for word in tag_words(category):
            if self.lexicon.get(_phrase_key([word])) == category:
                return _phrase_key([word])
        return category

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        data["domain"], data["config"] = self.domain.model_dump(), self.config.model_dump(mode="json")
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict, source: str = "vocabulary") -> AttributeVocab:
        if data.get("format") != FORMAT:
            raise DataError(f"{source}: format is {data.get('format')!r}, expected {FORMAT!r}")
        try:
            return cls(domain=Domain(**data["domain"]), config=VocabConfig(**data["config"]),
                       categories=tuple(data["categories"]), brands=tuple(data["brands"]),
                       decades=bool(data["decades"]), keyword_idf={str(k): float(v) for k, v in
                                                                  data["keyword_idf"].items()},
                       lexicon=dict(data["lexicon"]), modifier_form=dict(data["modifier_form"]),
                       example_tags=tuple(data.get("example_tags", ())))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}: bad attribute vocabulary: {e!r}") from e


_NUMBER_WORDS = {
    "twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
    "seventies": 1970, "eighties": 1980, "nineties": 1990,
}  # fmt: skip
_DECADE = re.compile(r"^'?(\d{2}|\d{4})'?s$")


def word_decade(word: str) -> str | None:
    """ "90s", "'90s", "1990s", "nineties" -> "1990s"; two-digit 10s..90s read as 19xx, 00s as 2000s."""
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


def _noun(domain: Domain) -> str:
    # "1990s film" is what the movie tags always said (the adapter was trained on it).
    return "film" if is_movie_domain(domain) else domain.item


def is_movie_domain(domain: Domain) -> bool:
    return domain.item.lower() in {"movie", "film"}


def _tokens(text: str) -> list[str]:
    """Lowercase content words of free text (HTML tags and entities removed, stop words dropped)."""
    stop = _stop_words()
    words = (t.strip("'-_") for t in _TOKEN.findall(html.unescape(_HTML_TAG.sub(" ", text)).lower()))
    return [t for t in words if len(t) >= 3 and t not in stop]


def build_vocabulary(items: Iterable[Item], domain: Domain | None = None,
                     config: VocabConfig | None = None) -> AttributeVocab:
    """The attribute vocabulary of a catalogue (pass `dataset.item_index.values()` and `dataset.domain`)."""
    items = list(items)
    domain = domain or Domain()
    config = config or VocabConfig()
    if not items:
        raise DataError("build_vocabulary needs at least one item")
    movie = is_movie_domain(domain) if config.movie_lexicon is None else config.movie_lexicon
    categories = _kept_categories(items, config, movie)
    brands = _kept_brands(items) if config.brands else ()
    decades = config.decades and any(it.year is not None for it in items)
    use_keywords = (not movie) if config.keywords is None else config.keywords
    lexicon = _lexicon(categories, brands, movie)
    brand_words = {t for b in brands for t in _tokens(b)}  # "conde nast" is the brand, not two keywords
    idf = _keyword_idf(items, config, set(lexicon) | brand_words) if use_keywords else {}
    lexicon.update({w: w for w in idf})  # a keyword names itself even when it is another one's plural
    for word in sorted(idf):
        for form in plurals(word):
            lexicon.setdefault(form, word)
    vocab = AttributeVocab(domain=domain, config=config, categories=categories, brands=brands, decades=decades,
                           keyword_idf=idf, lexicon=lexicon, modifier_form=dict(MODIFIER_FORM) if movie else {})
    counts = Counter(t for it in items for t in vocab.item_tags(it))
    # Movies keep the prompts' own examples (llmrec.nouns), so ML-100K's vocabulary stays the fixed one.
    examples = () if movie else tuple(t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    examples = examples[:N_EXAMPLE_TAGS]
    return replace(vocab, example_tags=examples, _memo={}, _tag_memo={})


def _kept_categories(items: Sequence[Item], config: VocabConfig, movie: bool) -> tuple[str, ...]:
    counts = Counter(c for it in items for c in {normalise(g) for g in it.genres} - NOT_ATTRIBUTES)
    if movie:  # all MovieLens genres in their fixed core order, so ML-100K tags do not move
        return tuple(sorted(GENRES, key=CORE_ORDER.index))
    limit = config.max_category_share * len(items)
    kept = [c for c, n in counts.items() if n <= limit and n >= config.min_category_items]
    # A category on more items reads as the noun ("core"); ties alphabetical for stable tags.
    return tuple(sorted(kept, key=lambda c: (-counts[c], c)))


def _kept_brands(items: Sequence[Item]) -> tuple[str, ...]:
    return tuple(sorted({normalise(it.brand) for it in items if it.brand} - NOT_ATTRIBUTES))


def _lexicon(categories: Sequence[str], brands: Sequence[str], movie: bool) -> dict[str, str]:
    """Word/phrase -> attribute. Explicit entries win; a word shared by two categories names the one on more
    items (the first in `categories`)."""
    lexicon: dict[str, str] = dict(WORDS) | {" ".join(k): v for k, v in PHRASES.items()} if movie else {}
    for c in categories:
        key = _phrase_key(tag_words(c))
        for form in [key, key + "s", *plurals(key)]:  # key + "s": MovieLens always read "children'ss" so
            lexicon.setdefault(form, c)
    for c in (c for c in categories if len(tag_words(c)) > 1):  # "arts, music & photography": each content word
        for w in sorted({_phrase_key([w]) for w in tag_words(c)} - _stop_words() - {""}):
            for form in [w, *plurals(w)]:
                lexicon.setdefault(form, c)
    for b in brands:
        lexicon.setdefault(_phrase_key(tag_words(b)), f"brand:{b}")
    return lexicon


def _keyword_idf(items: Sequence[Item], config: VocabConfig, taken: set[str]) -> dict[str, float]:
    """Keyword -> idf over the catalogue: in >= min_df items, <= max_df share, not already a lexicon word."""
    df = Counter(t for it in items for t in set(_tokens(f"{it.title} {it.text or ''}")))
    n = len(items)
    kept = [(t, c) for t, c in df.items() if config.min_df <= c <= config.max_df * n and t not in taken]
    kept = sorted(kept, key=lambda tc: (-tc[1], tc[0]))[: config.max_keywords]
    return {t: round(math.log((1 + n) / (1 + c)) + 1.0, 6) for t, c in sorted(kept)}


def save_vocabulary(vocab: AttributeVocab, folder: str | Path) -> Path:
    """Write `folder/vocab.json` (self-describing: format, domain, config, attributes, lexicon)."""
    path = Path(folder) / FILENAME
    path.write_text(json.dumps(vocab.to_dict(), indent=1, sort_keys=True))
    return path


def load_vocabulary(folder_or_file: str | Path) -> AttributeVocab:
    path = Path(folder_or_file)
    path = path / FILENAME if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: attribute vocabulary not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON: {e}") from e
    return AttributeVocab.from_dict(data, source=str(path))


def movie_vocabulary() -> AttributeVocab:
    """The MovieLens vocabulary (18 genres, decades, movie lexicon): what tags meant before vocabularies."""
    return _MOVIE


_MOVIE = AttributeVocab(domain=Domain(item="movie", items="movies", user="viewer"), config=VocabConfig(),
                        categories=tuple(sorted(GENRES, key=CORE_ORDER.index)), brands=(), decades=True,
                        keyword_idf={}, lexicon=_lexicon(GENRES, (), True), modifier_form=dict(MODIFIER_FORM))


def vocabulary_of(dataset, config: VocabConfig | None = None) -> AttributeVocab:
    """The attribute vocabulary of a `llmrec.data.Dataset` (built once per dataset object and config)."""
    config = config or VocabConfig()
    memo = dataset.__dict__.setdefault("_attribute_vocabs", {})
    if config not in memo:
        memo[config] = build_vocabulary(dataset.item_index.values(), dataset.domain, config)
    return memo[config]
