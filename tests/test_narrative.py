from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from llmrec.config import NarrativeConfig
from llmrec.narrative import (
    NarrativeReport,
    bucket_label,
    load_narrative_tokenizer,
    render_item,
    render_narrative,
    render_narratives,
    token_counter,
)
from llmrec.schema import Event, Item, UserHistory
from llmrec.data.split import events_before, split_leave_one_out

AS_OF = datetime(1998, 6, 15, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def tok():
    """The real SmolLM2 tokenizer, loaded offline (from the packaged GGUF once, then from the cache)."""
    return load_narrative_tokenizer()


def exact_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def history(user, rows):
    return UserHistory(user_id=user, events=tuple(
        Event(user_id=user, item_id=i, timestamp=t, behavior=b) for i, t, b in rows))


ITEMS = {
    "sw": Item(item_id="sw", title="Star Wars", year=1977, genres=("Action", "Adventure", "Sci-Fi", "War")),
    "ts": Item(item_id="ts", title="Toy Story", genres=("Animation",)),
    "un": Item(item_id="un", title="Untitled"),
}
ROWS = [
    ("sw", datetime(1998, 3, 5, tzinfo=timezone.utc), "watched"),
    ("sw", datetime(1998, 3, 20, tzinfo=timezone.utc), "watched"),
    ("ts", datetime(1996, 5, 1, tzinfo=timezone.utc), "clicked"),
    ("ts", datetime(1996, 5, 2, tzinfo=timezone.utc), "impression"),  # not intentional: dropped, counted
    ("sw", datetime(1998, 6, 13, 9, tzinfo=timezone.utc), "liked"),
    ("un", datetime(1998, 6, 15, 8, tzinfo=timezone.utc), "disliked"),
    ("un", datetime(1998, 6, 16, tzinfo=timezone.utc), "liked"),  # after as_of: never read
]


def test_format_buckets_and_reverse_aggregation(tok):
    report = NarrativeReport()
    n = render_narrative(history("u", ROWS), ITEMS, AS_OF, NarrativeConfig(), tok, report)
    assert n.text == (
        "today disliked | Untitled\n"
        "2d ago liked, Mar 1998 watched x2 | Star Wars (1977; Action, Adventure, Sci-Fi)\n"
        "1996 clicked | Toy Story (Animation)"
    )
    assert (n.n_events_in, n.n_items_out, n.as_of) == (6, 3, AS_OF)
    assert n.n_tokens == exact_tokens(tok, n.text) and n.fits_budget
    assert report.dropped_behaviors == {"impression": 1}
    assert report.events_after_as_of == 1


def test_item_rendering_uses_key_attributes_only():
    assert render_item("Star Wars", 1977, ["Action", "Sci-Fi"], 3) == "Star Wars (1977; Action, Sci-Fi)"
    assert render_item("Heat", None, ["Action", "Crime"], 1) == "Heat (Action)"
    assert render_item("Heat", 1995, ["Action"], 0) == "Heat (1995)"
    assert render_item(" Two\nLines ", None, [], 3) == "Two Lines"


@pytest.mark.parametrize(
    "age_days, recent, monthly, label",
    [(0, 30, 365, "today"), (1, 30, 365, "1d ago"), (29, 30, 365, "29d ago"), (30, 30, 365, "May 1998"),
     (364, 30, 365, "Jun 1997"), (365, 30, 365, "1997"), (10, 7, 365, "Jun 1998"), (100, 7, 90, "1998")],
)
def test_time_buckets_relative_to_as_of(tok, age_days, recent, monthly, label):
    ts = AS_OF - timedelta(days=age_days, hours=1)
    cfg = NarrativeConfig(recent_days=recent, monthly_days=monthly)
    n = render_narrative(history("u", [("sw", ts, "liked")]), ITEMS, AS_OF, cfg, tok)
    assert n.text.split(" | ")[0] == f"{label} liked"


def test_bucket_labels_round_trip_codes():
    assert bucket_label(0) == "today" and bucket_label(12) == "12d ago"


def test_pairs_per_item_are_capped_keeping_the_most_informative(tok):
    rows = [("sw", AS_OF - timedelta(days=d), "clicked") for d in (1, 2, 3, 4, 5)]
    rows.append(("sw", AS_OF - timedelta(days=20), "liked"))
    report = NarrativeReport()
    n = render_narrative(history("u", rows), ITEMS, AS_OF, NarrativeConfig(max_pairs_per_item=2), tok, report)
    # liked (weight 3) beats every click; of the clicks the most recent stays; shown most recent first.
    assert n.text == "1d ago clicked, 20d ago liked | Star Wars (1977; Action, Adventure, Sci-Fi)"
    assert report.pairs_over_cap == 4
    assert n.text.count("|") == 1  # one entry per item


def test_repeated_pairs_collapse_with_a_count(tok):
    rows = [("ts", AS_OF - timedelta(hours=h), "clicked") for h in (1, 2, 3)]
    n = render_narrative(history("u", rows), ITEMS, AS_OF, NarrativeConfig(), tok)
    assert n.text == "today clicked x3 | Toy Story (Animation)"


def test_budget_drops_least_informative_oldest_whole_entries(tok):
    # One liked item among many clicks at the same time, and two watched items of different age.
    catalogue = {f"i{k}": Item(item_id=f"i{k}", title=f"Film number {k}", year=1990, genres=("Drama",))
                 for k in range(40)}
    rows = [(f"i{k}", AS_OF - timedelta(days=3), "clicked") for k in range(36)]
    rows += [("i36", AS_OF - timedelta(days=3), "liked"), ("i37", AS_OF - timedelta(days=400), "liked"),
             ("i38", AS_OF - timedelta(days=2), "watched"), ("i39", AS_OF - timedelta(days=900), "watched")]
    full = render_narrative(history("u", rows), catalogue, AS_OF, NarrativeConfig(max_tokens=4096), tok)
    report = NarrativeReport()
    cut = render_narrative(history("u", rows), catalogue, AS_OF, NarrativeConfig(max_tokens=64), tok, report)
    assert cut.n_tokens <= 64 and cut.n_tokens == exact_tokens(tok, cut.text)
    kept = cut.text.split("\n")
    assert set(kept) < set(full.text.split("\n"))  # whole entries only
    assert any("Film number 36 " in line for line in kept)  # recent like first
    assert not any("Film number 39 " in line for line in kept)  # the oldest watched goes first
    assert report.entries_over_budget == 40 - len(kept)
    # Kept entries print most recent first.
    assert kept[0].startswith("2d ago watched")


def test_recency_half_life_decides_old_like_vs_fresh_watch(tok):
    rows = [("sw", AS_OF - timedelta(days=300), "liked"), ("ts", AS_OF - timedelta(hours=2), "watched")]
    # A 32-token budget leaves room for one of the two entries only.
    slow = render_narrative(history("u", rows), ITEMS, AS_OF,
                            NarrativeConfig(max_tokens=32, recency_half_life_days=1000), tok)
    fast = render_narrative(history("u", rows), ITEMS, AS_OF,
                            NarrativeConfig(max_tokens=32, recency_half_life_days=10), tok)
    assert slow.n_items_out == fast.n_items_out == 1 and slow.n_tokens <= 32
    assert "Star Wars" in slow.text and "Toy Story" in fast.text


def test_max_genres_limits_attributes(tok):
    rows = [("sw", AS_OF - timedelta(days=1), "liked")]
    n = render_narrative(history("u", rows), ITEMS, AS_OF, NarrativeConfig(max_genres=1), tok)
    assert n.text == "1d ago liked | Star Wars (1977; Action)"


@pytest.mark.parametrize("budget", [48, 256, 1024])
def test_budget_never_exceeded_and_counts_are_exact_on_ml100k(ml100k, tok, budget):
    users = ml100k.events["user_id"].drop_duplicates().iloc[::9]  # ~105 users
    ev = ml100k.events[ml100k.events["user_id"].isin(users)]
    out = render_narratives(ev, ml100k.items, None, NarrativeConfig(max_tokens=budget), tok)
    assert len(out) == len(users)
    tokens = np.array([n.n_tokens for n in out])
    assert (tokens <= budget).all()
    exact = token_counter(tok).encode_lengths([n.text for n in out])
    assert (exact == tokens).all()  # the fast sum of cached parts equals whole-text tokenization
    titles = ml100k.items.set_index("item_id")["title"]
    for n in out:  # item_ids names the item of every line, in line order
        lines = n.text.split("\n") if n.text else []
        assert len(n.item_ids) == len(lines) == n.n_items_out
        assert all(line.split(" | ", 1)[1].startswith(" ".join(titles[i].split())[:20]) for line, i in zip(lines, n.item_ids))


def test_exact_mode_matches_the_fast_path(tiny, tok):
    fast = render_narratives(tiny.events, tiny.items, None, NarrativeConfig(max_tokens=300), tok)
    exact = render_narratives(tiny.events, tiny.items, None, NarrativeConfig(max_tokens=300, count_mode="exact"), tok)
    assert [n.model_dump() for n in fast] == [n.model_dump() for n in exact]


class CharTokenizer:
    """A non-additive tokenizer: one token per started 4 characters of the whole text."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[0] * -(-len(t) // 4) for t in texts]}


def test_non_additive_tokenizer_falls_back_to_exact_trimming(tiny):
    fake = CharTokenizer()
    assert not token_counter(fake).additive
    out = render_narratives(tiny.events, tiny.items, None, NarrativeConfig(max_tokens=100), fake)
    for n in out:
        assert n.n_tokens == -(-len(n.text) // 4) <= 100
        assert len(n.item_ids) == n.n_items_out == (n.text.count("\n") + 1 if n.text else 0)


def test_unintentional_behaviours_are_dropped_and_counted(tiny, tok):
    report = NarrativeReport()
    out = render_narratives(tiny.events, tiny.items, None, NarrativeConfig(behavior_weights={"liked": 1.0}), tok,
                            report)
    counts = tiny.events["behavior"].value_counts()
    assert report.dropped_behaviors == {b: int(counts[b]) for b in ("disliked", "watched")}
    assert all(" watched" not in n.text and " disliked" not in n.text for n in out)
    assert sum(n.n_events_in for n in out) == len(tiny.events)  # events in are counted before the filter


def test_no_event_at_or_after_as_of_is_read(tiny, tok):
    split = split_leave_one_out(tiny.events)
    as_of = split.as_of("test")
    report = NarrativeReport()
    leaky = render_narratives(tiny.events, tiny.items, as_of, NarrativeConfig(), tok, report)
    clean = render_narratives(events_before(tiny.events, as_of), tiny.items, as_of, NarrativeConfig(), tok)
    assert [n.text for n in leaky] == [n.text for n in clean]
    before = events_before(tiny.events, as_of).groupby("user_id").size()
    assert {n.user_id: n.n_events_in for n in leaky} == before.to_dict()
    assert report.events_after_as_of == len(tiny.events) - len(events_before(tiny.events, as_of))
    assert all(n.as_of == as_of[n.user_id].to_pydatetime() for n in leaky)
    # One time for everyone: the same guard.
    t = pd.Timestamp("1997-12-01", tz="UTC")
    single = render_narratives(tiny.events, tiny.items, t, NarrativeConfig(), tok)
    assert sum(n.n_events_in for n in single) == int((tiny.events["timestamp"] < t).sum())


def test_users_only_in_as_of_get_an_empty_narrative(tiny, tok):
    as_of = pd.Series([pd.Timestamp("1998-01-01", tz="UTC")] * 2, index=["1", "nobody"])
    out = render_narratives(tiny.events, tiny.items, as_of, NarrativeConfig(), tok)
    assert [n.user_id for n in out] == ["1", "nobody"]
    assert out[1].text == "" and out[1].n_tokens == 0 and out[1].n_events_in == 0


def test_deterministic_regardless_of_input_order(tiny, tok):
    cfg = NarrativeConfig(max_tokens=200)
    a = render_narratives(tiny.events, tiny.items, None, cfg, tok)
    shuffled = tiny.events.sample(frac=1.0, random_state=3).reset_index(drop=True)
    b = render_narratives(shuffled, tiny.items.sample(frac=1.0, random_state=4), None, cfg, tok)
    assert [n.model_dump() for n in a] == [n.model_dump() for n in b]
    # The one-user path is the batch path.
    by_user = {n.user_id: n for n in a}
    one = render_narrative(tiny.history("2"), tiny.item_index, by_user["2"].as_of, cfg, tok)
    assert one == by_user["2"]
    assert [n.user_id for n in a] == sorted(by_user)


def test_item_index_mapping_is_accepted_for_items(tiny, tok):
    a = render_narratives(tiny.events, tiny.items, None, NarrativeConfig(max_tokens=128), tok)
    b = render_narratives(tiny.events, tiny.item_index, None, NarrativeConfig(max_tokens=128), tok)
    assert [n.text for n in a] == [n.text for n in b]


@pytest.mark.parametrize(
    "kwargs, field",
    [({"behavior_weights": {"liked,": 1.0}}, "behavior_weights"), ({"behavior_weights": {"a": 0.0}}, "positive"),
     ({"recency_half_life_days": 0}, "recency_half_life_days"), ({"count_mode": "approx"}, "count_mode"),
     ({"recent_days": 40, "monthly_days": 30}, "monthly_days"), ({"max_pairs_per_item": 0}, "max_pairs_per_item")],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        NarrativeConfig(**kwargs)


def test_narrate_cli_writes_one_row_per_user(tiny, tok, tmp_path):
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from llmrec.cli import app

    folder = tiny.save(tmp_path / "tiny")
    out = tmp_path / "n.parquet"
    res = CliRunner().invoke(app, ["narrate", "--dataset", str(folder), "--out", str(out), "--max-tokens", "128"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    table = pq.read_table(out).to_pandas()
    assert len(table) == summary["users"] == 20
    assert summary["share_within_budget"] == 1.0 and (table["n_tokens"] <= 128).all()
    assert summary["mean_events_in"] == pytest.approx(len(tiny.events) / 20, abs=0.01)
    assert {"mean_tokens_out", "users_per_s"} <= set(summary)
