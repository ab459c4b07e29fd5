"""The explanation rubric, and benchmarks/explanations.py on a tiny fake-backend build: the served
explanations are found in the table by their facts, and the records follow the llmrec.bench convention."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from explain.facts import ExplainFacts, catalogue_categories
from explain.rubric import judge
from llmrec.build import build_recommender
from llmrec.config import RecommenderConfig, TowerConfig
from llmrec.llm import FakeBackend
from llmrec.llm.fake import minimal_instance
from llmrec.pipeline import Recommender
from llmrec.schema import Item

REPO = Path(__file__).resolve().parents[1]
TINY_TOWERS = TowerConfig(encoder="hashed-bow", dim=16, hidden=32, epochs=1, patience=1, max_len=20,
                          uniform_negatives=32, beta_grid=(0.5, 1.0))
MIB = Item(item_id="257", title="Men in Black", genres=("Action", "Adventure", "Comedy", "Sci-Fi"), year=1997)
STAR = Item(item_id="50", title="Star Wars", genres=("Action", "Adventure", "Romance", "Sci-Fi", "War"), year=1977)
JAWS = Item(item_id="234", title="Jaws", genres=("Action", "Horror"), year=1975, brand="Universal")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_explanations", REPO / "benchmarks" / "explanations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rubric_judgements():
    f = ExplainFacts(item=MIB, evidence=(STAR,))
    assert judge("You liked Star Wars; Men in Black is also sci-fi and action.", f) == \
        {"factual": True, "relevant": True, "specific": True, "fluent": True}
    # Names only the decade: relevant to the 1990s interest, but not specific.
    decade = judge("Men in Black is a fun pick from the 1990s for you.", ExplainFacts(item=MIB, interest="1990s films"))
    assert decade == {"factual": True, "relevant": True, "specific": False, "fluent": True}
    # "Star Wars" is a title, not the genre war; nothing shared named, no evidence.
    assert judge("Men in Black is a fun pick for fans of Star Wars.", ExplainFacts(item=MIB))["relevant"] is False
    bad = judge("Men in Black is action, action, action with Will Smith.", f)
    assert not bad["factual"] and not bad["fluent"] and bad["specific"]
    assert judge("Jaws from Universal, like your Jaws 2, is worth it.",
                 ExplainFacts(item=JAWS, evidence=(Item(item_id="j2", title="Jaws 2", brand="Universal"),)))["relevant"]


def grounded_or_not(messages, schema):
    """Grounded sentences for most items, an invented star for titles of length divisible by 3 (-> template)."""
    user = messages[-1]["content"]
    found = re.search(r"^[A-Z]\w*: (.*?)( \(\d{4}\))?;", user, re.MULTILINE)  # "Movie: ...", "Item: ..."
    if found is None or "says why it fits" not in user:  # mining / cold-start prompts
        return json.dumps(minimal_instance(schema)) if schema else "ok"
    title = found.group(1)
    liked = re.search(r"^The \w+ liked: (.*?) \(", user, re.MULTILINE)
    if len(title) % 3 == 0:
        return json.dumps({"e": f"{title} is a gripping tale starring John Wayne."})
    if liked:
        return json.dumps({"e": f"You liked {liked.group(1)}; {title} should suit you well."})
    return json.dumps({"e": f"{title} is a good pick for you tonight."})


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    build_recommender(tiny, out, RecommenderConfig(towers=TINY_TOWERS), backend=FakeBackend(grounded_or_not),
                      mine_users=2, explain_users=4, k=5)
    return out


def test_served_explanations_are_found_by_their_facts(built):
    rec = Recommender.load(built)
    users = sorted(rec._sequences, key=lambda u: (len(u), u))[:4]  # the users the build explained
    served = [pair for u in users for pair in rec.served_facts(u, 5)]
    assert served and rec.explanations.coverage([f for _, f in served]) == 1.0
    for r, f in served:
        row = rec.explanations.lookup(f)
        assert (r.explanation, r.explanation_flagged) == (row.text, row.flagged)
    assert any(f.evidence for _, f in served)  # real histories give evidence
    flagged = {r.explanation_flagged for r, _ in served}
    assert flagged == {True, False}  # invented stars were templated, grounded answers kept


def test_evidence_comes_from_the_users_own_history(built):
    rec = Recommender.load(built)
    user = min(rec._sequences, key=lambda u: (len(u), u))
    own = set(rec.vocab.decode(rec._sequences[user]))
    for r, f in rec.served_facts(user, 5):
        assert {e.item_id for e in f.evidence} <= own and r.item.item_id not in own


def test_benchmark_writes_rubric_records(built, tmp_path):
    out = tmp_path / "explanations.json"
    _bench().main(["--artifacts", str(built), "--sample", "5", "--seed", "3", "--k", "5", "--out", str(out)])
    records = json.loads(out.read_text())
    by = {(r["source"], r["metric"]): r for r in records}
    assert {m for s, m in by if s == "all"} == {"factual", "relevant", "specific", "fluent", "template_share"}
    assert all(r["benchmark"] == "explanations" and r["unit"] == "share" and r["seed"] == 3 for r in records)
    assert by[("all", "factual")]["value"] == 1.0  # every served text, model or template, passes the check
    n_llm, n_tpl = by[("llm", "factual")]["n"], by[("template", "factual")]["n"]
    assert n_llm + n_tpl == by[("all", "factual")]["n"]
    assert by[("all", "template_share")]["value"] == pytest.approx(n_tpl / (n_llm + n_tpl))


def test_benchmark_records_from_served_pairs():
    bench = _bench()
    from llmrec.schema import Recommendation

    f = ExplainFacts(item=MIB, evidence=(STAR,))
    served = [(Recommendation(item=MIB, score=1.0, explanation="You liked Star Wars; Men in Black is sci-fi too."), f),
              (Recommendation(item=MIB, score=0.5, explanation="Men in Black stars Will Smith, a real treat.",
                              explanation_flagged=True), f)]
    records = bench.explanation_records(served, catalogue_categories([MIB, STAR]), 160, seed=0)
    by = {(r["source"], r["metric"]): r["value"] for r in records}
    assert by[("all", "factual")] == 0.5 and by[("llm", "factual")] == 1.0 and by[("template", "factual")] == 0.0
    assert by[("all", "template_share")] == 0.5 and by[("llm", "relevant")] == 1.0
