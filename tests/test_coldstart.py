"""Cold start by imagined histories: examples, validation, fallback, catalogue mapping, cache, fusion."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from llmrec.coldstart import (
    Catalogue,
    ExamplePool,
    age_bucket,
    imagine_histories,
)
from llmrec.coldstart_fusion import early_fusion, fuse, imagined_vectors, late_fusion_sequences
from llmrec.config import ColdStartConfig
from llmrec.llm import FakeBackend
from llmrec.schema import UserHistory
from retrieval.encoder import encode_hashed_bow

REAL = {"t": "Toy Story", "g": ["Animation", "Children's", "Comedy"], "y": 1995}
MADE_UP = {"t": "Zorblax Quinterfold", "g": ["Sci-Fi"], "y": 1997}


class RecordingBackend(FakeBackend):
    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None,
                 frequency_penalty=0.0):
        out = super().generate(prompts, json_schema=json_schema, max_tokens=max_tokens, temperature=temperature,
                               adapter=adapter, frequency_penalty=frequency_penalty)
        self.calls[-1].update(max_tokens=max_tokens, temperature=temperature, prompts=prompts)
        return out


@pytest.fixture(scope="module")
def world(tiny):
    items = tiny.item_index
    catalogue = Catalogue(list(items.values()), encode_hashed_bow)
    profiles = {u: tiny.profile(u) for u in tiny.users["user_id"]}
    pool = ExamplePool.from_events(tiny.events, profiles, items, n_items=5)
    return tiny, catalogue, pool


def cold_users(tiny, n_events=2, ids=("1", "2", "3")):
    out = []
    for u in ids:
        h = tiny.history(u)
        out.append((u, h.profile, h.events[:n_events]))
    return out


def answer(*entries):
    return lambda messages, schema: json.dumps({"m": list(entries)})


def test_examples_are_similar_users_first_items(world):
    tiny, _, pool = world
    assert age_bucket("24") == "18+" and age_bucket("17") == "0+" and age_bucket("60") == "56+" and age_bucket("x") == "unknown"
    me = {"age": "24", "gender": "M", "occupation": "technician"}
    picked = pool.similar("999", me, 3)
    assert len(picked) == 3 and all(len(e.items) == 5 for e in picked)
    assert picked[0].profile["occupation"] == "technician"  # user 1 in the tiny slice is a 24-year-old male technician
    assert "999" not in {e.user_id for e in picked} and "1" not in {e.user_id for e in pool.similar("1", me, 19)}
    first = tiny.events[tiny.events.user_id == "1"].head(5)["item_id"].tolist()
    assert [i.item_id for i in next(e for e in pool.examples if e.user_id == "1").items] == first


def test_imagine_maps_titles_and_counts_unmatched(world, tmp_path):
    tiny, catalogue, pool = world
    backend = RecordingBackend(answer(REAL, MADE_UP))
    cfg = ColdStartConfig(n_imagined=2, n_examples=2, example_items=3, batch_size=2, max_tokens=99, sim_threshold=0.9,
                          temperature=0.3)
    out, stats = imagine_histories(cold_users(tiny), backend, cfg, catalogue, pool)
    assert [h.user_id for h in out] == ["1", "2", "3"] and all(h.source == "llm" for h in out)
    toy, made_up = out[0].items
    assert toy.item_id == "1" and toy.similarity > 0.99 and made_up.item_id is None
    assert (stats.n_matched, stats.n_unmatched, stats.valid_share, stats.fallback) == (3, 3, 1.0, 0)
    assert [c["n"] for c in backend.calls] == [2, 1] and backend.calls[0]["max_tokens"] == 99 and backend.calls[0]["temperature"] == 0.3
    prompt = backend.calls[0]["prompts"][0][-1]["content"]
    examples = re.findall(r"^- .*$", prompt, re.M)
    assert len(examples) == 2 and all(len(line.split(": ", 1)[1].split("; ")) == 3 for line in examples)
    assert "occupation technician" in prompt and "Name 2 other movies" in prompt
    vecs = imagined_vectors(out[0], catalogue)  # [k, D]: matched row = catalogue vector, unmatched = own vector
    assert vecs.shape == (2, catalogue.vectors.shape[1])
    assert (vecs[0] == catalogue.vectors[catalogue.index["1"]]).all() and abs(float(vecs[1] @ vecs[1]) - 1) < 1e-5


def test_warm_users_are_skipped_and_counted(world):
    tiny, catalogue, pool = world
    users = cold_users(tiny, n_events=2, ids=("1",)) + cold_users(tiny, n_events=7, ids=("2",))
    out, stats = imagine_histories(users, FakeBackend(answer(REAL)), ColdStartConfig(max_events=5), catalogue, pool)
    assert [h.user_id for h in out] == ["1"] and stats.not_cold == 1
    out, stats = imagine_histories(users, FakeBackend(answer(REAL)), ColdStartConfig(max_events=7), catalogue, pool)
    assert len(out) == 2 and stats.not_cold == 0


def test_invalid_answers_are_retried_then_fall_back_to_examples(world):
    tiny, catalogue, pool = world
    backend = FakeBackend(lambda m, s: '{"m": [{"t": ')
    cfg = ColdStartConfig(n_examples=3, n_imagined=4)
    out, stats = imagine_histories(cold_users(tiny, ids=("5",)), backend, cfg, catalogue, pool)
    assert len(backend.calls) == 2 and stats.fallback == 1 and stats.valid_share == 0.0 and stats.errors
    h = out[0]
    example_items = {i.item_id for e in pool.similar("5", tiny.profile("5"), 3) for i in e.items}
    assert h.source == "fallback" and len(h.items) == 4 and {i.item_id for i in h.items} <= example_items
    echo = 'JSON:\n{"m":[{"t":"title","g":["genre"],"y":1995}]}'
    out, stats = imagine_histories(cold_users(tiny, ids=("5",)), FakeBackend(lambda m, s: echo), cfg, catalogue, pool)
    assert out[0].source == "fallback"  # the format's placeholder echoed back is refused
    prose = 'Sure! {"m":[{"t":"Toy Story","g":["Comedy"],"y":1995}]} Enjoy.'
    out, stats = imagine_histories(cold_users(tiny, ids=("5",)), FakeBackend(lambda m, s: prose), cfg, catalogue, pool)
    assert out[0].source == "llm" and out[0].items[0].title == "Toy Story"
    backend = FakeBackend(lambda m, s: "nope")
    imagine_histories(cold_users(tiny, ids=("5",)), backend, cfg.model_copy(update={"retries": 0}), catalogue, pool)
    assert len(backend.calls) == 1


def test_retry_samples_at_the_retry_temperature_so_it_can_change_its_answer(world):
    """A greedy retry repeats the greedy answer; the re-ask must sample at `retry_temperature`."""
    tiny, catalogue, pool = world

    class Sampling(RecordingBackend):  # stands in for sampling: the greedy answer echoes the placeholder
        def generate(self, prompts, **kw):
            self.temperature = kw["temperature"]
            return super().generate(prompts, **kw)

    backend = Sampling(lambda m, s: json.dumps({"m": [{"t": "title"}] if backend.temperature == 0.0 else [REAL]}))
    cfg = ColdStartConfig(n_imagined=2, retries=2, temperature=0.0, retry_temperature=0.8)
    out, stats = imagine_histories(cold_users(tiny, ids=("1", "2")), backend, cfg, catalogue, pool, adapter="lora")
    assert [(c["n"], c["temperature"], c["adapter"]) for c in backend.calls] == [(2, 0.0, "lora"), (2, 0.8, "lora")]
    assert all(h.source == "llm" for h in out) and (stats.valid_first, stats.valid_retry) == (0, 2)
    assert stats.semantic_failures == 2 and "placeholders" in stats.errors[0]


def test_cache_hits_and_regenerates_on_profile_or_history_change(world, tmp_path):
    tiny, catalogue, pool = world
    cache = tmp_path / "cold.json"
    users = cold_users(tiny, ids=("1", "2"))
    cfg = ColdStartConfig(n_imagined=1)
    first, _ = imagine_histories(users, FakeBackend(answer(REAL)), cfg, catalogue, pool, cache_path=cache)
    backend = FakeBackend(answer(MADE_UP))
    again, stats = imagine_histories(users, backend, cfg, catalogue, pool, cache_path=cache)
    assert again == first and stats.cached == 2 and backend.calls == []
    assert (stats.n_imagined, stats.n_matched, stats.fallback) == (2, 2, 0)  # cached histories are counted too
    changed = [("1", {**users[0][1], "occupation": "artist"}, users[0][2]), ("2", users[1][1], users[1][2][:1])]
    out, stats = imagine_histories(changed, backend, cfg, catalogue, pool, cache_path=cache)
    assert stats.generated == 2 and [h.items[0].title for h in out] == [MADE_UP["t"]] * 2
    out, stats = imagine_histories(users, backend, cfg.model_copy(update={"n_imagined": 2}), catalogue, pool, cache_path=cache)
    assert stats.generated == 2  # the generation config is part of the key too
    assert set(json.loads(cache.read_text())) == {"1", "2"}


def test_early_and_late_fusion_place_imagined_events_before_real_ones(world):
    tiny, catalogue, pool = world
    real = tiny.history("1")
    real = real.model_copy(update={"events": real.events[:2]})
    cfg = ColdStartConfig(spacing_hours=2.0, imagined_behavior="imagined", sim_threshold=0.9)
    star_wars = {"t": "Star Wars", "g": ["Action", "Adventure", "Romance", "Sci-Fi", "War"][:3], "y": 1977}
    out, _ = imagine_histories([("1", real.profile, real.events)], FakeBackend(answer(REAL, MADE_UP, star_wars)), cfg, catalogue, pool)
    early = early_fusion(real, out[0], cfg)
    imagined = early.events[: len(early.events) - 2]
    matched = [i.item_id for i in out[0].items if i.item_id is not None and i.item_id not in {e.item_id for e in real.events}]
    assert [e.item_id for e in imagined] == matched and early.events[-2:] == real.events
    assert all(e.behavior == "imagined" for e in imagined)
    gaps = [(b.timestamp - a.timestamp).total_seconds() for a, b in zip(early.events, early.events[1:len(imagined) + 1])]
    assert gaps == [7200.0] * len(imagined)
    late = late_fusion_sequences(real, out[0], cfg)
    assert len(late) == len(matched) and all(s.events[1:] == real.events and s.events[0].timestamp < real.events[0].timestamp for s in late)
    assert fuse(real, out[0], cfg) == [early] and fuse(real, out[0], cfg.model_copy(update={"fusion": "late"})) == late
    empty = UserHistory(user_id="new", profile={"age": "30"})
    with pytest.raises(ValueError, match="anchor"):
        early_fusion(empty, out[0], cfg)
    anchor = datetime(1998, 1, 1, tzinfo=timezone.utc)
    assert early_fusion(empty, out[0], cfg, anchor=anchor).events[-1].timestamp < anchor


def test_config_validation():
    with pytest.raises(ValidationError, match="n_imagined"):
        ColdStartConfig(n_imagined=0)
    with pytest.raises(ValidationError, match="fusion"):
        ColdStartConfig(fusion="middle")
    with pytest.raises(ValidationError, match="spacing_hours"):
        ColdStartConfig(spacing_hours=0)
    with pytest.raises(ValidationError, match="retry_temperature"):
        ColdStartConfig(retry_temperature=2.5)
    cfg = ColdStartConfig(fusion="late", sim_threshold=0.3)
    assert ColdStartConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.slow
def test_real_smollm2_imagines_a_valid_history_or_flagged_fallback(model_dir, tiny):
    """The real packaged model and MiniLM: answers are validated, mapped to the catalogue above the threshold,
    or replaced by the examples' first items; the result fuses into one ordered history."""
    from llmrec.config import LLMConfig
    from llmrec.llm import TransformersBackend
    from retrieval.encoder import TextEncoder

    backend = TransformersBackend(LLMConfig(model=str(model_dir), backend="transformers", batch_size=2))
    items = list(tiny.item_index.values())[:300]  # a catalogue slice keeps MiniLM encoding short
    encoder = TextEncoder("minilm")
    catalogue = Catalogue(items, lambda texts: encoder.encode(texts, cache=len(texts) == len(items)))
    pool = ExamplePool.from_events(tiny.events, {u: tiny.profile(u) for u in tiny.users["user_id"]},
                                   {i.item_id: i for i in items}, n_items=3)
    cfg = ColdStartConfig(n_imagined=3, n_examples=2, example_items=3, max_tokens=64, sim_threshold=0.6)
    users = cold_users(tiny, n_events=1, ids=("1", "2"))
    out, stats = imagine_histories(users, backend, cfg, catalogue, pool)
    assert [h.user_id for h in out] == ["1", "2"] and stats.generated == 2
    assert stats.fallback == sum(h.source == "fallback" for h in out)
    for h, (user_id, profile, events) in zip(out, users):
        assert 1 <= len(h.items) <= 3
        for it in h.items:
            assert it.item_id is None or (it.item_id in catalogue.index and it.similarity >= cfg.sim_threshold)
        fused = early_fusion(UserHistory(user_id=user_id, events=events, profile=profile), h, cfg)
        times = [e.timestamp for e in fused.events]
        assert times == sorted(times) and fused.events[-1] == events[-1]


def test_format_line_shows_a_real_example_movie_not_a_bare_placeholder(tiny):
    from llmrec.coldstart import ExampleUser, imagine_messages

    first = tiny.item_index["1"]
    ex = ExampleUser(user_id="9", profile={"age": "30"}, items=(first,))
    user = imagine_messages({"age": "31"}, [], [ex], ColdStartConfig())[1]["content"]
    line = next(l for l in user.splitlines() if l.startswith("JSON format:"))
    sample = json.loads(line.removeprefix("JSON format: ").replace(", ...", ""))["m"][0]
    assert sample["t"] == re.sub(r"\s*\(\d{4}\)$", "", first.title) and sample["y"] == first.year
    bare = imagine_messages({"age": "31"}, [], [], ColdStartConfig())[1]["content"]
    assert '"t":"title"' in bare  # no example user: the placeholder, which validation refuses when echoed
