"""benchmarks/mining.py on the synthetic ML-100K: the command's outputs become records in the llmrec.bench
convention, the LLM rows sit beside heuristic and sanity rows scored on the same users, and fallbacks are
shown apart (subset llm_only) so their history tags never count as the model's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from llmrec.bench import read_records
from llmrec.cli.mine import save_profiles
from llmrec.data import resolve_dataset
from llmrec.data.split import split_leave_one_out
from llmrec.interests import MiningStats
from llmrec.schema import InterestProfile, Tag

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_mining", REPO / "benchmarks" / "mining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_mining(users: list[str]):
    """Stands in for the child `llmrec mine-interests`: writes what it writes, for `users`."""

    def run(adapter, dataset, out, n_users, shard_size, config=None):
        profiles = [InterestProfile(user_id=u, tags=(Tag(text="1990s drama"), Tag(text="sci-fi action")),
                                    source="fallback" if k == 0 else "llm", model="vllm+lora")
                    for k, u in enumerate(users)]
        stats = MiningStats(users=len(users), valid_first=len(users) - 2, valid_retry=1, fallback=1,
                            answers=len(users) + 2, answers_valid=len(users), prompt_tokens=200 * (len(users) + 2),
                            output_tokens=130 * (len(users) + 2), seconds=30.0, interests_kept=10,
                            evidence_attributed=15)
        save_profiles(out, profiles, stats, config={"jobs": {"shard_size": 256}, "llm": {"block_size": 32}},
                      manifest={"n_users": len(users)})
        return 40.0

    return run


def test_mining_benchmark_records_time_validity_and_tag_rows(tmp_path, monkeypatch):
    bench = _bench()
    split = split_leave_one_out(resolve_dataset("ml-100k").events)
    users = sorted(split.test["user_id"].unique(), key=lambda u: (len(u), u))[:12]
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")  # exists: not rebuilt
    monkeypatch.setattr(bench, "run_mining", _fake_mining(users))
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no finetune")))
    out = tmp_path / "mining.json"
    monkeypatch.setattr("sys.argv", ["mining.py", "--adapter", str(adapter), "--out", str(out)])
    bench.main()

    records = read_records(out)
    by = {(r["model"], r["metric"], r.get("subset")): r for r in records}
    assert by[("lora", "seconds", None)]["value"] == 40.0 and by[("lora", "seconds", None)]["users"] == 12
    assert by[("lora", "mining_seconds", None)]["value"] == 30.0
    assert by[("lora", "valid_first_try", None)]["value"] == 10 / 12
    assert by[("lora", "valid_final", None)]["value"] == 11 / 12
    assert by[("lora", "output_tokens_per_user", None)]["value"] == 130
    assert by[("lora", "seconds", None)]["block_size"] == 32
    # Answers that cite no lines (format 5): attributed evidence per interest, and no grounding rate of citations.
    assert by[("lora", "evidence_attributed_per_interest", None)]["value"] == 1.5
    assert ("lora", "grounded", None) not in by and ("lora", "grounding_exists", None) not in by
    # Tag rows: the LLM's own users apart from the fallback, heuristics and sanity rows on the same 12 users.
    assert by[("lora", "tag_ndcg", "llm_only")]["n"] == 11 and by[("lora", "tag_ndcg", None)]["n"] == 12
    for row in ("history_tags", "popular_tags", "single_tag", "random_tags"):
        assert by[(row, "tag_ndcg", None)]["n"] == 12 and 0.0 <= by[(row, "tag_ndcg", None)]["value"] <= 1.0
    assert not list(tmp_path.glob("llmrec-mining-*"))  # the temp folder is removed


def test_a_missing_adapter_is_built_first_and_timed(tmp_path, monkeypatch):
    bench = _bench()
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        Path(cmd[cmd.index("--out") + 1]).mkdir(parents=True)
        (Path(cmd[cmd.index("--out") + 1]) / "adapter_config.json").write_text(json.dumps({"r": 8}))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    assert bench.ensure_adapter(tmp_path / "lora", "ml-100k", lambda m: None) >= 0.0
    assert calls and calls[0][3:5] == ["finetune", "--dataset"]
    assert bench.ensure_adapter(tmp_path / "lora", "ml-100k", lambda m: None) is None and len(calls) == 1
