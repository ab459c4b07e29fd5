from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from llmrec.config import MiningConfig
from llmrec.interests import (
    interest_messages,
    interests_wire,
    mine_interests,
    profiles_from_table,
    profiles_to_table,
    round_robin,
    salvage_truncated,
    wire_interest,
)
from llmrec.llm import FakeBackend
from llmrec.llm.structured import repair_truncated
from llmrec.schema import Narrative
from llmrec.tags import history_tags

N_ITEMS = 12  # items per test narrative
# The answers below: format 4 (cited line numbers), up to 4 tags, long titles, cut to the decoded length bounds.
WIDE = MiningConfig(max_evidence=2, tags_per_interest=4, max_tag_chars=80, decode_max_lengths=True)


def render_test_narratives(ds, users):
    """A stand-in for llmrec.narrative in the format it renders: "liked | Title (1977; Action, Sci-Fi)"."""
    out = []
    for u in users:
        ids = ds.events.loc[ds.events["user_id"] == u, "item_id"].tolist()[:N_ITEMS]
        lines = []
        for iid in ids:
            it = ds.item_index[iid]
            base = it.title.rsplit(" (", 1)[0]
            lines.append(f"liked | {base} ({it.year}; {', '.join(it.genres)})")
        text = "\n".join(lines)
        out.append(Narrative(user_id=u, text=text, as_of=datetime(1998, 4, 1, tzinfo=timezone.utc),
                             n_events_in=len(ids), n_items_out=len(ids), n_tokens=len(text.split()), max_tokens=1024,
                             item_ids=tuple(ids)))
    return out


def shown_lines(messages):
    """The history lines of a mining prompt, without their numbers (format 4 numbers them, format 5 does not)."""
    lines = messages[1]["content"].split("History:\n", 1)[1].splitlines()
    numbered = "numbered history" in messages[0]["content"]
    return [line.split(". ", 1)[1] for line in lines] if numbered else lines


def good_answer(messages, schema, bogus=True):
    """A valid answer citing lines 1..5 (and one line beyond the narrative), with tags to be filtered."""
    seen_title = shown_lines(messages)[0].split(" | ", 1)[1].rsplit(" (", 1)[0].lower()
    interests = []
    for k in range(5):
        tags = [f"tag {k}a", f"tag {k}b"] if k else ["romantic comedy", "Romantic  comedy", f"{seen_title} sequel",
                                                       "dark stuff"]
        interests.append({"n": f"interest {k}", "e": [k + 1] + ([99] if bogus and k == 0 else []), "t": tags})
    positions = schema["items"]["prefixItems"]  # stay inside the schema, as constrained decoding does
    t = positions[-1]
    for i in interests:
        i["t"] = [x[: t["items"].get("maxLength")] for x in i["t"][: t["maxItems"]]]
    if len(positions) == 2:  # format 5: no cited lines
        return json.dumps([[i["n"], i["t"]] for i in interests])
    return json.dumps([[i["n"], i["e"], i["t"]] for i in interests])


@pytest.fixture(scope="module")
def narratives(tiny):
    return render_test_narratives(tiny, ["1", "2", "3"])


def test_prompt_numbers_lines_only_when_cited_and_keeps_instructions_in_the_shared_system_message(narratives):
    a, b = (interest_messages(n.text, MiningConfig()) for n in narratives[:2])
    assert a[0] == b[0] and "History" not in a[0]["content"]  # one cached prefix for every user
    assert shown_lines(a) == narratives[0].text.splitlines()
    assert a[1]["content"].splitlines()[1] == narratives[0].text.splitlines()[0]  # format 5: cites none, unnumbered
    numbered = interest_messages(narratives[0].text, WIDE)  # format 4 cites line numbers
    assert numbered[1]["content"].splitlines()[1].startswith("1. ")
    assert shown_lines(numbered) == narratives[0].text.splitlines()


def test_valid_answers_become_llm_profiles_with_grounded_evidence(tiny, narratives):
    backend = FakeBackend(good_answer)
    profiles, stats = mine_interests(narratives, backend, WIDE, items=tiny.item_index)
    assert [c["n"] for c in backend.calls] == [3], stats.errors  # one batched call, never one per user
    for p, n in zip(profiles, narratives):
        assert p.source == "llm" and len(p.interests) == 5
        assert [i.evidence for i in p.interests] == [(n.item_ids[k],) for k in range(5)]  # line k+1 -> item
        # Round robin over interests; the duplicate (case/space) and the tag naming a seen title are dropped.
        assert [t.text for t in p.tags] == ["romantic comedy", "tag 1a", "tag 2a", "tag 3a", "tag 4a",
                                            "dark stuff", "tag 1b", "tag 2b", "tag 3b", "tag 4b"]
        assert p.tags[0].interest == "interest 0" and p.tags[1].interest == "interest 1"
    assert stats.valid_first == 3 and stats.valid_rate == 1.0
    assert stats.evidence_cited == 18 and stats.evidence_dropped == 3  # line 99 is no line of the narrative
    assert stats.grounding == pytest.approx(15 / 18)
    assert (stats.tags_title_dropped, stats.tags_duplicate_dropped, stats.tags_kept) == (3, 3, 30)
    assert stats.tags_unmapped == 27  # "romantic comedy" names known attributes; "tag 1a" and "dark stuff" do not


def test_round_robin_takes_first_tags_of_every_interest_first():
    assert round_robin([["a1", "a2", "a3"], [], ["c1"], ["d1", "d2"]]) == ["a1", "c1", "d1", "a2", "d2", "a3"]


def test_invalid_then_valid_is_retried_once_in_one_batch(tiny, narratives):
    seen_prompts: dict[str, int] = {}

    def flaky(messages, schema):
        key = messages[1]["content"]
        seen_prompts[key] = seen_prompts.get(key, 0) + 1
        return "Sure! Here are the interests:" if seen_prompts[key] == 1 else good_answer(messages, schema)

    backend = FakeBackend(flaky)
    profiles, stats = mine_interests(narratives, backend, WIDE, items=tiny.item_index)
    assert [c["n"] for c in backend.calls] == [3, 3]
    assert stats.valid_retry == 3 and stats.valid_first == 0
    assert (stats.answers, stats.answers_valid, stats.to_dict()["json_valid_rate"]) == (6, 3, 0.5)
    assert all(p.source == "llm" for p in profiles)
    assert stats.errors and stats.errors[0]["raw"].startswith("Sure!") and stats.errors[0]["stage"] == "try1"
    assert (stats.parse_failures, stats.semantic_failures, stats.unconstrained_answers) == (3, 0, 0)


def test_semantic_failures_and_unconstrained_backends_are_counted(tiny, narratives):
    class Unconstrained(FakeBackend):
        enforces_schema = False

    dup = json.dumps({"i": [{"n": "Same", "e": [1], "t": ["quiet drama"]}] * 5})
    _, stats = mine_interests(narratives[:2], Unconstrained(lambda m, s: dup), WIDE, items=tiny.item_index)
    assert (stats.parse_failures, stats.semantic_failures, stats.fallback) == (0, 4, 2)
    assert stats.unconstrained_answers == stats.answers == 4 and stats.errors[0]["reason"].startswith("semantic:")


def test_invalid_twice_falls_back_flagged_and_counted(tiny, narratives):
    backend = FakeBackend(lambda m, s: '{"i": [{"n": "only one", "e": [], "t": ["x"]}]}')  # < min_interests
    cfg = MiningConfig(tags_per_interest=3)
    profiles, stats = mine_interests(narratives, backend, cfg, items=tiny.item_index)
    assert stats.fallback == 3 and stats.valid_first == stats.valid_retry == 0
    assert len(backend.calls) == 2  # first try + retry
    for p, n in zip(profiles, narratives):
        hist = [tiny.item_index[i] for i in n.item_ids]
        assert p.source == "fallback"
        assert [t.text for t in p.tags] == history_tags(hist, cfg.max_tags)
        assert len(p.interests) <= cfg.max_interests and all(i.evidence for i in p.interests)


def test_answers_without_a_usable_tag_are_retried_then_fall_back(tiny, narratives):
    def no_tags(messages, schema):
        return json.dumps({"i": [{"n": f"i{k}", "e": [1], "t": []} for k in range(5)]})

    profiles, stats = mine_interests(narratives[:1], FakeBackend(no_tags), WIDE, items=tiny.item_index)
    assert stats.fallback == 1 and profiles[0].source == "fallback" and profiles[0].tags
    assert "no usable tag" in stats.errors[0]["reason"]


def test_min_interests_rejects_duplicate_names(tiny, narratives):
    dup = json.dumps({"i": [{"n": "Same", "e": [1], "t": ["quiet drama"]}] * 5})
    _, stats = mine_interests(narratives[:1], FakeBackend(lambda m, s: dup), WIDE, items=tiny.item_index)
    assert stats.fallback == 1 and "distinct interests" in stats.errors[0]["reason"]
    _, stats = mine_interests(narratives[:1], FakeBackend(lambda m, s: dup), MiningConfig(min_interests=1),
                              items=tiny.item_index)
    assert stats.valid_first == 1 and stats.duplicate_interests_dropped == 4


class RecordingBackend(FakeBackend):
    def __init__(self, responder=None):
        super().__init__(responder)
        self.settings: list[tuple[int, float, int, str | None]] = []
        self.schemas: list[dict | None] = []

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None,
                 frequency_penalty=0.0):
        self.settings.append((len(prompts), temperature, max_tokens, adapter, frequency_penalty))
        self.schemas.append(json_schema)
        return super().generate(prompts, json_schema=json_schema, max_tokens=max_tokens,
                                temperature=temperature, adapter=adapter)


def test_config_fields_reach_the_backend(tiny, narratives):
    cfg = MiningConfig(batch_size=2, max_tokens=100, temperature=0.1, retry_temperature=0.9, frequency_penalty=0.3)
    backend = RecordingBackend(lambda m, s: "not json")
    profiles, _ = mine_interests(narratives, backend, cfg, adapter="lora1", items=tiny.item_index)
    assert backend.settings == [(2, 0.1, 100, "lora1", 0.3), (1, 0.1, 100, "lora1", 0.3),
                                (2, 0.9, 100, "lora1", 0.3), (1, 0.9, 100, "lora1", 0.3)]
    assert profiles[0].model == "fake+lora1"
    # Length bounds are validated, not decoded (cheaper grammar), unless the config asks to decode them.
    assert all("maxLength" not in json.dumps(x) and "maxItems" in json.dumps(x) for x in backend.schemas)
    profiles, _ = mine_interests(narratives, backend, MiningConfig(decode_max_lengths=True), items=tiny.item_index,
                                 label="vllm+merged")
    assert profiles[0].model == "vllm+merged"
    assert backend.schemas[-1] == interests_wire(MiningConfig()).model_json_schema()


def test_wire_schema_follows_the_config():
    cfg = MiningConfig(min_interests=2, max_interests=3, max_evidence=2, tags_per_interest=4, max_name_chars=10,
                       max_tag_chars=12)
    s = json.dumps(interests_wire(cfg).model_json_schema())
    for frag in ('"minItems": 2', '"maxItems": 3', '"maxItems": 2', '"maxItems": 4', '"maxLength": 10',
                 '"maxLength": 12', '"minimum": 1'):
        assert frag in s
    assert cfg.max_tags == 12
    with pytest.raises(ValueError, match="min_interests"):
        MiningConfig(min_interests=6, max_interests=5)


def test_truncated_answer_is_salvaged_only_when_cut_by_the_budget():
    wire = interests_wire(MiningConfig(min_interests=1, max_evidence=2))
    cut = '{"i":[{"n":"romantic comedy","e":[1],"t":["a {b"]},{"n":"dark","e":[2],"t":["x"]},{"n":"90s'
    assert salvage_truncated(cut) == '{"i":[{"n":"romantic comedy","e":[1],"t":["a {b"]},{"n":"dark","e":[2],"t":["x"]}]}'
    (fixed,) = repair_truncated(cut, "length")
    assert [i.n for i in wire.model_validate_json(fixed).i] == ["romantic comedy", "dark"]
    assert repair_truncated(cut, "stop") == []
    assert salvage_truncated('{"i":[{"n":"x') is None


def test_truncated_array_answer_is_closed_after_its_last_complete_interest():
    wire = interests_wire(MiningConfig(min_interests=1, max_evidence=2))
    cut = '[["romantic comedy",[1],["a [b"]],["dark",[2],["x"]],["90s'
    assert salvage_truncated(cut) == '[["romantic comedy",[1],["a [b"]],["dark",[2],["x"]]]'
    (fixed,) = repair_truncated(cut, "length")
    assert [i.n for i in wire.model_validate_json(fixed).i] == ["romantic comedy", "dark"]
    assert salvage_truncated('[["x",[1') is None and salvage_truncated("no json") is None


def test_wire_is_positional_and_still_reads_the_keyed_format_3():
    """Constrained decoding emits arrays; an adapter tuned on the keyed format still parses where the backend
    does not enforce the schema (transformers), with the same meaning."""
    wire = interests_wire(MiningConfig(min_interests=2, max_interests=2, max_evidence=2))
    arrays = wire.model_validate_json('[["space opera",[1,2],["90s sci-fi"]],["noir",[],["dark crime"]]]')
    keyed = wire.model_validate_json('{"i":[{"n":"space opera","e":[1,2],"t":["90s sci-fi"]},'
                                     '{"n":"noir","e":[],"t":["dark crime"]}]}')
    assert arrays.i == keyed.i and arrays.i[0].n == "space opera" and arrays.i[0].e == [1, 2]
    assert arrays.i[1].t == ["dark crime"]
    with pytest.raises(ValueError):  # a fourth position is not part of an interest
        wire.model_validate_json('[["a",[1],["x"],"extra"],["b",[2],["y"]]]')
    schema = wire.model_json_schema()
    assert schema["type"] == "array" and len(schema["items"]["prefixItems"]) == 3


def test_profiles_round_trip_through_parquet(tiny, narratives, tmp_path):
    import pyarrow.parquet as pq

    profiles, _ = mine_interests(narratives, FakeBackend(good_answer), WIDE, items=tiny.item_index)
    pq.write_table(profiles_to_table(profiles), tmp_path / "p.parquet")
    assert profiles_from_table(pq.read_table(tmp_path / "p.parquet")) == profiles
    bad = profiles_to_table(profiles).drop_columns(["source"])
    with pytest.raises(ValueError, match="source"):
        profiles_from_table(bad)


def test_cli_writes_profiles_manifest_and_summary(monkeypatch, tmp_path, capsys):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    import llmrec.llm
    from llmrec.cli import app

    monkeypatch.setattr(llmrec.llm, "make_backend", lambda config: FakeBackend(good_answer))
    res = CliRunner().invoke(app, ["mine-interests", "--out", str(tmp_path / "m"), "--users", "3",
                                   "--max-tokens", "200", "--backend", "transformers"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["users"] == 3 and summary["valid_first"] == 3 and summary["users_per_min"] > 0
    profiles = profiles_from_table(pq.read_table(tmp_path / "m" / "profiles.parquet"))
    assert [p.user_id for p in profiles] == ["1", "2", "3"] and all(p.source == "llm" for p in profiles)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert set(manifest["prompt_hashes"]) == {"interests"} and manifest["split_hash"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["narrative"]["max_tokens"] == 200 and config["llm"]["backend"] == "transformers"
    bad = CliRunner().invoke(app, ["mine-interests", "--out", str(tmp_path / "x"), "--backend", "nope"])
    assert bad.exit_code != 0 and "--backend" in bad.output


# --- The real packaged model (SmolLM2-135M-Instruct) ----------------------------------------------

REAL_MINING = MiningConfig(min_interests=2, max_interests=2, max_evidence=2, tags_per_interest=2, max_name_chars=32,
                           max_tag_chars=24, max_tokens=96)


def real_narratives(tiny):
    from llmrec.config import NarrativeConfig
    from llmrec.narrative import load_narrative_tokenizer, render_narratives
    from llmrec.data.split import split_leave_one_out

    split = split_leave_one_out(tiny.events)
    users = ["1", "2"]
    events = split.history("test")
    return render_narratives(events[events["user_id"].isin(users)], tiny.items, split.as_of("test").loc[users],
                             NarrativeConfig(max_tokens=128), load_narrative_tokenizer())


def check_real_mining_and_rerank(tiny, backend):
    """Whatever the small model says, the outputs are validated, counted and grounded; rerank orders by score."""
    from llmrec.rerank import rerank

    narratives = real_narratives(tiny)
    profiles, stats = mine_interests(narratives, backend, REAL_MINING, items=tiny.item_index)
    print(json.dumps({k: v for k, v in stats.to_dict().items() if k != "errors"}))
    assert [p.user_id for p in profiles] == ["1", "2"]
    assert stats.valid_first + stats.valid_retry + stats.fallback == 2
    for p, n in zip(profiles, narratives):
        assert n.item_ids and all(set(i.evidence) <= set(n.item_ids) for i in p.interests)
        assert p.tags and len(p.tags) <= REAL_MINING.max_tags
        assert (p.source == "llm") == (len(p.interests) >= REAL_MINING.min_interests and p.interests[0].why == "")
    cands = [[tiny.item_index[i] for i in ("1", "50", "181")]] * 2
    ranked = rerank(narratives, cands, backend, k=2)
    for r in ranked:
        scores = [s for _, s in r]
        assert len(r) == 2 and scores == sorted(scores, reverse=True) and all(abs(s) < 100 for s in scores)
    return stats


def test_real_model_mines_and_reranks_with_transformers(tiny):
    from llmrec.config import LLMConfig
    from llmrec.llm import make_backend

    backend = make_backend(LLMConfig(backend="transformers", batch_size=2))
    try:
        check_real_mining_and_rerank(tiny, backend)
    finally:
        backend.close()


@pytest.mark.slow
def test_real_model_mines_and_reranks_with_vllm_json_schema(tiny):
    from llmrec.config import LLMConfig
    from llmrec.llm import make_backend

    from llmrec.interests import interest_messages

    backend = make_backend(LLMConfig(backend="vllm", enable_lora=False, max_model_len=1024))
    try:
        check_real_mining_and_rerank(tiny, backend)
        # Schema-guided decoding: every answer that ends by itself parses against the wire schema (the base
        # model may still fail the semantic checks, e.g. by copying the prompt's "..." placeholders).
        wire = interests_wire(REAL_MINING)
        gens = backend.generate([interest_messages(n.text, REAL_MINING) for n in real_narratives(tiny)],
                                json_schema=wire.model_json_schema(), max_tokens=256)
    finally:
        backend.close()
    finished = [g for g in gens if g.finish_reason == "stop"]
    assert finished and all(wire.model_validate_json(g.text) for g in finished)


def test_cli_resumes_finished_shards_without_calling_the_llm(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import llmrec.llm
    from llmrec.cli import app

    backends = []

    def make(config):
        backends.append(FakeBackend(good_answer))
        return backends[-1]

    monkeypatch.setattr(llmrec.llm, "make_backend", make)
    args = ["mine-interests", "--out", str(tmp_path / "m"), "--users", "4", "--shard-size", "2",
            "--max-tokens", "200", "--backend", "transformers"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert sum(c["n"] for c in backends[0].calls) >= 4
    assert len(list((tmp_path / "m" / "shards").glob("shard-*.parquet"))) == 2
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert backends[1].calls == []  # every shard was already finished
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["users"] == 4 and summary["valid_first"] == 4  # counts of the earlier run kept


def test_echoed_placeholders_are_invalid_and_fall_back(tiny, narratives):
    def echo(messages, schema):
        return json.dumps({"i": [{"n": f"<interest{k}>" if k else "...", "e": [1], "t": ["..."]} for k in range(5)]})

    profiles, stats = mine_interests(narratives[:1], FakeBackend(echo), WIDE, items=tiny.item_index)
    assert profiles[0].source == "fallback" and stats.fallback == 1
    assert not any(i.name.startswith(("<", ".")) for i in profiles[0].interests)
    assert any("placeholder" in e["reason"] for e in stats.errors)


def test_default_answer_format_cites_no_lines_and_still_reads_format_4():
    """Format 5 (max_evidence = 0): [name, tags] pairs; a format-4 triple from an older adapter on a backend
    that does not enforce the schema parses to the same name and tags, its line numbers ignored."""
    config = MiningConfig(min_interests=2, max_interests=2)
    assert config.max_evidence == 0 and config.evidence_per_interest == config.attributed_evidence == 2
    wire = interests_wire(config)
    schema = wire.model_json_schema()
    assert len(schema["items"]["prefixItems"]) == 2
    pairs = wire.model_validate_json('[["space opera",["90s sci-fi"]],["noir",["dark crime"]]]')
    triples = wire.model_validate_json('[["space opera",[1,2],["90s sci-fi"]],["noir",[],["dark crime"]]]')
    assert pairs.i == triples.i and pairs.i[0].e == [] and pairs.i[1].t == ["dark crime"]
    assert wire_interest("noir", [3], ["dark crime"], config) == ["noir", ["dark crime"]]
    assert wire_interest("noir", [3], ["dark crime"], MiningConfig(max_evidence=2)) == ["noir", [3], ["dark crime"]]
    system = interest_messages("A | liked", config)[0]["content"]
    assert "history lines" not in system and 'Format: [["...",["...","..."]]]' in system


def pair_answer(messages, schema):
    """A format-5 answer naming genres of the test catalogue, so evidence can be attributed."""
    return json.dumps([["drama", ["quiet drama"]], ["comedy", ["romantic comedy"]], ["sci-fi", ["space sci-fi"]],
                       ["thriller", ["dark thriller"]], ["moon knitting", ["lunar knitting"]]])


def test_answers_citing_no_lines_get_evidence_attributed_from_the_narrative(tiny, narratives):
    from llmrec.tags import item_attributes, tag_attributes

    config = MiningConfig(tags_per_interest=1)
    profiles, stats = mine_interests(narratives, FakeBackend(pair_answer), config, items=tiny.item_index)
    assert stats.valid_first == 3 and stats.evidence_cited == 0 and stats.to_dict()["grounded"] is None
    attributed = 0
    for p, n in zip(profiles, narratives):
        for interest in p.interests:
            assert len(interest.evidence) <= config.attributed_evidence
            assert set(interest.evidence) <= set(n.item_ids)  # only items the model was shown
            own = [t.text for t in p.tags if t.interest == interest.name]
            wanted = frozenset().union(*(tag_attributes(x) or () for x in [interest.name, *own]))
            for iid in interest.evidence:  # every attributed item carries an attribute the interest names
                assert wanted & item_attributes(tiny.item_index[iid])
            attributed += len(interest.evidence)
        assert p.interests[-1].evidence == ()  # an interest no shown item supports keeps none
    assert attributed == stats.evidence_attributed > 0
    assert stats.interests_kept == 15 and "attributed per interest" in stats.evidence_summary()
    # Without the catalogue nothing can be attributed, and nothing is invented.
    bare, stats = mine_interests(narratives[:1], FakeBackend(pair_answer), config)
    assert all(i.evidence == () for i in bare[0].interests) and stats.evidence_attributed == 0
