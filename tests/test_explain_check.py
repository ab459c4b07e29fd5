"""The closed-world check and the facts it checks against: every failure seen in `make demo` is rejected,
grounded texts and every template are accepted."""

from __future__ import annotations

import pytest

from explain.check import check_explanation, invented_names, repetition, sensitive_terms
from explain.explain import template_text
from explain.facts import (
    ExplainFacts,
    build_facts,
    catalogue_categories,
    interest_attributes,
    interest_matches,
    natural_title,
    select_evidence,
    title_forms,
)
from llmrec.config import ExplainConfig
from llmrec.schema import Domain, Item

MOVIE = Domain(item="movie", items="movies", user="viewer")
CRAFT = Item(item_id="928", title="Craft, The", genres=("Drama", "Horror"), year=1996)
ROMY = Item(item_id="1014", title="Romy and Michele's High School Reunion", genres=("Comedy",), year=1997)
MIB = Item(item_id="257", title="Men in Black", genres=("Action", "Adventure", "Comedy", "Sci-Fi"), year=1997)
WIVES = Item(item_id="476", title="First Wives Club, The", genres=("Comedy",), year=1996)
CAPE = Item(item_id="218", title="Cape Fear", genres=("Thriller",), year=1991)
HUNTING = Item(item_id="272", title="Good Will Hunting", genres=("Drama",), year=1997)
INDY = Item(item_id="210", title="Indiana Jones and the Last Crusade", genres=("Action", "Adventure"), year=1989)
STAR = Item(item_id="50", title="Star Wars", genres=("Action", "Adventure", "Romance", "Sci-Fi", "War"), year=1977)
EMPIRE = Item(item_id="172", title="Empire Strikes Back, The",
              genres=("Action", "Adventure", "Drama", "Romance", "Sci-Fi", "War"), year=1980)
ALIENS = Item(item_id="176", title="Aliens", genres=("Action", "Sci-Fi", "Thriller", "War"), year=1986)
SLEEPLESS = Item(item_id="88", title="Sleepless in Seattle", genres=("Comedy", "Romance"), year=1993)
WIRED = Item(item_id="m1", title="Wired", genres=("Science & Technology",), brand="Condé Nast",
             text="Monthly magazine on technology and its effect on culture.")
POPSCI = Item(item_id="m2", title="Popular Science", genres=("Science & Technology",), brand="Bonnier")
FORBES = Item(item_id="m3", title="Forbes", genres=("Business",), brand="Forbes Media")
MAGS = Domain(item="magazine", items="magazines", user="reader")
VOCAB = catalogue_categories([CRAFT, ROMY, MIB, WIVES, CAPE, HUNTING, INDY, STAR, EMPIRE, ALIENS, SLEEPLESS])


def facts(item, interest=None, evidence=(), domain=MOVIE):
    return ExplainFacts(item=item, interest=interest, evidence=tuple(evidence), domain=domain)


# --- The failures quoted in issue 13 --------------------------------------------------------------

@pytest.mark.parametrize("text, item, interest, expected", [
    ("The Art of Love is a 1996 film about a black lesbian who makes a bid for blackness in a beautiful white world.",
     CRAFT, None, "title"),
    ("The Craft is a 1996 film about a black lesbian who makes a bid for blackness in a beautiful white world.",
     CRAFT, None, "personal attribute"),
    ("The Craft, like The Art of Love, is a 1996 horror drama for you.", CRAFT, None, "Art"),
    ("Romy and Michele's High School Reunion is a 1997 comedy starring Michele Romy and Ryan Romy.",
     ROMY, None, "Michele Romy"),
    ("Men in Black is a fantasmic adventure, perfect for a fan of action, action, action.", MIB, None, "repeats"),
    ("Because you like 1990s action: First Wives Club, The is a comedy film from 1996.", WIVES, None, "action"),
    ("Cape Fear, a 1991 thriller, is a fine choice for a fan of 1980s comedy.", CAPE, None, "1980s"),
    ("Good Will Hunting, a classic children's drama, is a fine pick for you.", HUNTING, None, "children's"),
    ("Inepto-Dino there, the last great adventure: Indiana Jones and the Last Crusade.", INDY, None, "Inepto-Dino"),
    ("Indiana Jones and the Last Crusade stars Inepto-Dino in the last great adventure.", INDY, None, "Inepto-Dino"),
])
def test_every_quoted_failure_is_rejected_with_its_reason(text, item, interest, expected):
    reason = check_explanation(text, facts(item, interest), VOCAB)
    assert reason is not None and expected in reason


ERASER = Item(item_id="405", title="Eraser", genres=("Action", "Thriller"), year=1996)
CHAMBER = Item(item_id="r1", title="Chamber, The", genres=("Drama",), year=1995)
GODFATHER = Item(item_id="127", title="Godfather, The", genres=("Action", "Crime", "Drama"), year=1972)
GODFATHER2 = Item(item_id="187", title="Godfather: Part II, The", genres=("Action", "Crime", "Drama"), year=1974)
DIVORCEE = Item(item_id="d1", title="Gay Divorcee, The", genres=("Comedy", "Musical"), year=1934)
DUCK = Item(item_id="d2", title="Duck Soup", genres=("Comedy", "War"), year=1933)
STRANGELOVE = Item(item_id="s1", title="Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb",
                   genres=("Sci-Fi", "War"), year=1963)
ODYSSEY = Item(item_id="s2", title="2001: A Space Odyssey", genres=("Drama", "Mystery", "Sci-Fi", "Thriller"),
               year=1968)
TROOPERS = Item(item_id="s3", title="Starship Troopers", genres=("Action", "Adventure", "Sci-Fi", "War"), year=1997)


def test_an_evidence_title_is_never_read_as_a_sensitive_claim():
    text = "You liked The Gay Divorcee (1934); Duck Soup (1933) is also comedy."
    assert check_explanation(text, facts(DUCK, evidence=[DIVORCEE]), VOCAB) is None
    assert "sexuality" in check_explanation("Duck Soup is a gay comedy from 1933, made for you.",
                                            facts(DUCK, evidence=[DIVORCEE]), VOCAB)


def test_templates_with_long_titles_name_fewer_evidence_items_and_still_pass():
    f = facts(STRANGELOVE, evidence=[ODYSSEY, TROOPERS])
    text = template_text(f, ExplainConfig())
    assert len(text) <= ExplainConfig().max_chars and "2001: A Space Odyssey" in text and "Troopers" not in text
    assert check_explanation(text, f, VOCAB) is None


@pytest.mark.parametrize("text, f, ok", [
    # Seen in `make demo`: the wrong year passed because an evidence item is from 1995.
    ("Eraser is a 1995 action thriller, right in line with your taste for 1990s action thrills.",
     facts(ERASER, evidence=[CHAMBER]), False),
    ("Eraser (1995) is an action thriller like The Chamber.", facts(ERASER, evidence=[CHAMBER]), False),
    ("Cape Fear, a 1980s thriller, is a fine choice for you.", facts(CAPE, evidence=[ALIENS]), False),
    # The item's own date, and another date that belongs to an evidence title or to the user's taste, pass.
    ("Eraser is a 1996 action thriller, right in line with your taste for 1990s action thrills.",
     facts(ERASER, evidence=[CHAMBER]), True),
    ("Eraser is like The Chamber (1995), another thriller-paced drama you liked.",
     facts(ERASER, evidence=[CHAMBER]), True),
    ("You liked The Chamber (1995); Eraser (1996) is also a thriller.", facts(ERASER, evidence=[CHAMBER]), True),
    # An item title inside an evidence title is the evidence's (seen in the rubric sample).
    ("You liked The Godfather: Part II (1974); The Godfather (1972) is also crime and drama.",
     facts(GODFATHER, evidence=[GODFATHER2]), True),
    ("You liked The Godfather: Part II (1974); The Godfather (1974) is also crime and drama.",
     facts(GODFATHER, evidence=[GODFATHER2]), False),
])
def test_a_date_right_after_the_item_title_must_be_the_items_own(text, f, ok):
    reason = check_explanation(text, f, VOCAB)
    assert (reason is None) if ok else (reason is not None and "dates the item" in reason), reason


def test_mismatched_interests_never_reach_the_facts():
    # "1990s action" shares the decade with a 1996 comedy but would pin "action" on it.
    assert not interest_matches("1990s action", WIVES)
    assert not interest_matches("1980s comedy", CAPE)
    assert interest_matches("1990s comedies", WIVES) and interest_matches("dark thrillers", CAPE)
    assert interest_matches("space sci-fi", CAPE, [ALIENS])  # the evidence item supplies the attribute
    assert build_facts(WIVES, "1990s action", [], 2, MOVIE).interest is None
    assert build_facts(SLEEPLESS, "1990s romantic comedies", [], 2, MOVIE).interest == "1990s romantic comedies"


# --- Grounded texts pass ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, f", [
    ("You liked Star Wars and The Empire Strikes Back; Men in Black is another 1990s sci-fi action comedy.",
     facts(MIB, evidence=[STAR, EMPIRE])),
    ("You liked Star Wars (1977); Men in Black (1997) is also sci-fi and action.", facts(MIB, evidence=[STAR])),
    ("Sleepless in Seattle is a 1993 romantic comedy, right in line with your taste for 1990s romantic comedies.",
     facts(SLEEPLESS, "1990s romantic comedies")),
    ("Cape Fear is a tense 1991 thriller, much like Aliens, which you enjoyed.", facts(CAPE, evidence=[ALIENS])),
    ("The First Wives Club is a 1996 comedy you will enjoy.", facts(WIVES)),
    ("First Wives Club, The is a 1996 comedy you will enjoy.", facts(WIVES)),  # the catalogue form is allowed
    ("The Craft is a 1996 horror drama, dark and moody like Aliens.", facts(CRAFT, evidence=[ALIENS])),
    ("Wired, from Condé Nast, covers technology and culture, like Popular Science which you read.",
     facts(WIRED, evidence=[POPSCI], domain=MAGS)),
])
def test_grounded_texts_are_accepted(text, f):
    assert check_explanation(text, f, VOCAB) is None


def test_catalogue_categories_outside_the_genre_lexicon_are_checked():
    vocab = catalogue_categories([WIRED, POPSCI, FORBES])
    assert "business" in check_explanation("Wired is a business magazine for every curious reader.",
                                           facts(WIRED, domain=MAGS), vocab)
    assert check_explanation("Wired is a science & technology magazine for every curious reader.",
                             facts(WIRED, domain=MAGS), vocab) is None


@pytest.mark.parametrize("f", [
    facts(MIB, evidence=[STAR, EMPIRE]), facts(MIB, evidence=[STAR]), facts(SLEEPLESS, "1990s romantic comedies"),
    facts(WIVES), facts(CRAFT, evidence=[ALIENS]), facts(INDY), facts(WIRED, evidence=[POPSCI], domain=MAGS),
    facts(FORBES, domain=MAGS), facts(Item(item_id="x", title="Untitled Thing"), domain=Domain()),
])
def test_every_template_passes_the_check_and_reads_naturally(f):
    text = template_text(f, ExplainConfig())
    assert check_explanation(text, f, VOCAB) is None, text
    assert ", The" not in text and "Because you like" not in text


def test_templates_never_echo_a_sensitive_interest():
    f = facts(WIVES, "1990s gay comedies")
    assert f.interest and "gay" not in template_text(f, ExplainConfig())
    assert check_explanation(template_text(f, ExplainConfig()), f) is None


def test_template_wording():
    cfg = ExplainConfig()
    assert template_text(facts(MIB, evidence=[STAR]), cfg) == \
        "You liked Star Wars (1977); Men in Black (1997) is also action, adventure and sci-fi."
    assert template_text(facts(MIB, evidence=[STAR]), ExplainConfig(max_genres=1)).endswith("is also action.")
    assert template_text(facts(WIVES, "1990s comedies"), cfg) == \
        "The First Wives Club (1996) is a comedy movie, matching your interest in 1990s comedies."
    assert template_text(facts(WIRED, evidence=[Item(item_id="m4", title="Vogue", brand="Condé Nast")],
                               domain=MAGS), cfg) == "You liked Vogue; Wired is also from Condé Nast."


# --- The pieces ------------------------------------------------------------------------------------

def test_title_forms_and_interest_attributes():
    assert natural_title("Empire Strikes Back, The") == "The Empire Strikes Back"
    assert natural_title("City of Lost Children, The (Cité des enfants perdus, La)") == "The City of Lost Children"
    assert "Empire Strikes Back, The" in title_forms("Empire Strikes Back, The")
    assert interest_attributes("'90s sci-fi comedies and film noir") == ({"sci-fi", "comedy", "film-noir"}, {1990})
    assert interest_attributes("cozy reads") == (set(), set())


def test_select_evidence_overlap_recency_self_and_limit():
    history = [STAR, ALIENS, EMPIRE, HUNTING, MIB, ROMY]  # oldest first
    assert select_evidence(MIB, history, 2) == (EMPIRE, STAR)  # most shared genres; MIB never cites itself
    assert select_evidence(MIB, history, 0) == ()
    assert select_evidence(CAPE, history, 3) == (ALIENS,)  # only Aliens is a thriller
    assert select_evidence(ROMY, [MIB, SLEEPLESS], 1) == (SLEEPLESS,)  # equal overlap: the more recent
    # Sharing only the decade is too weak to cite: every 1990s film would qualify.
    assert select_evidence(HUNTING, [Item(item_id="z", title="Z", genres=("Comedy",), year=1995)], 2) == ()
    assert select_evidence(WIRED, [Item(item_id="m4", title="Vogue", brand="Condé Nast")], 1)[0].title == "Vogue"


def test_repetition_safety_and_names_helpers():
    assert repetition("a fan of action, action, action") is not None
    assert repetition("great great fun for the whole family tonight") is not None
    assert repetition("a thriller, a thriller with a twist for thriller fans") is not None
    assert repetition("You liked Star Wars and The Empire Strikes Back") is None
    assert sensitive_terms("a film about a gay couple", facts(MIB)) == ["sexuality: 'gay'"]
    gay = Item(item_id="g", title="Gay Divorcee, The", genres=("Comedy", "Musical"), year=1934)
    assert sensitive_terms("The Gay Divorcee is a 1934 musical comedy.", facts(gay)) == []  # the item's own title
    assert invented_names("§ is a comedy starring Ryan Gosling.", facts(ROMY)) == ["Ryan Gosling"]
    assert invented_names("Because you liked §, try §.", facts(ROMY)) == []


def test_length_limits():
    assert "too short" in check_explanation("Men in Black, fun.", facts(MIB))
    long = "Men in Black is a comedy " + "with jokes and fun " * 8
    assert "too long" in check_explanation(long, facts(MIB), max_chars=60)
