"""The offline comparison: every model on one split, ranked by one metric code, over several seeds.

Protocol (STYLE 13/14), built once per run by `build_protocol`:
- `llmrec.data.split.split_leave_one_out`: each user's last event is the test target, the one before it the
  validation target. Models train on `Split.train`; early stopping and beta use the validation targets only.
  Every number reported here is a test number.
- Full-catalogue ranking, ties pessimistic, the items of the history the scorer was given excluded
  (`llmrec.metrics.target_ranks`). A cold slice hides older events from the model, so it also does not
  exclude them: the system of a cold user does not know them either (ML-100K has no repeats, so a hidden
  item is never the target).
- Slices: `all` (full visible history), `cold_N` (the last N visible events only: `truncate_history`; models
  are still trained on the normal train split), `long_tail` (users whose test item is long-tail).
- Long tail: sort items by training interactions; the head is the smallest set of most popular items that
  holds `long_tail_mass` (80%) of them; every other item, unseen ones included, is long-tail.
- Metrics at k = 10: ndcg, hr, mrr (no cut-off), coverage (share of the catalogue in any top-k list of the
  slice) and long_tail_share (share of recommended slots holding a long-tail item).
- Seeds retrain every learned model; a record's value is the mean over seeds, std the sample std (0 for one
  seed or a deterministic model). LLM rows run on a seeded user sample (`n` in the record says how many).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from llmrec.bench import record
from llmrec.config import EvaluateConfig
from llmrec.data import Dataset, ItemVocab, user_sequences
from llmrec.metrics import coverage_at_k, hr_at_k, long_tail_share_at_k, mrr, ndcg_at_k, target_ranks, topk
from llmrec.data.split import Split, split_leave_one_out, truncate_history
from retrieval.base import SequenceScorer, check_scores

BENCHMARK = "offline_eval"
METRICS = ("ndcg@{k}", "hr@{k}", "mrr", "coverage@{k}", "long_tail_share@{k}")
LLM_TAG_ROWS = {"three_tower_llm_tags": "llm_tags", "three_tower_llm_lora_tags": "llm_lora_tags"}
ABLATIONS = {"three_tower_no_logq": {"logq": False}, "three_tower_no_mixed_negatives": {"mixed_negatives": False},
             "three_tower_fixed_temperature": {"learnable_temperature": False}}
BASELINE_ROWS = ("popularity", "item_knn")  # deterministic: scored once, the score stands for every seed
COLDSTART_ROWS = {"coldstart_none": None, "coldstart_early_fusion": "early", "coldstart_late_fusion": "late"}
# Rows trained from the base three-tower model (one training per seed serves all of them).
BASE_TOWER_ROWS = ("three_tower_notag", "three_tower_heuristic_tags", "three_tower_llm_rerank", *COLDSTART_ROWS)


@dataclass
class SliceView:
    """One slice: its users, their test targets and the history each model is shown."""

    name: str
    users: list[str]
    targets: np.ndarray  # [U] item indices
    histories: list[np.ndarray]  # [U] visible item indices in time order
    events: pd.DataFrame  # the visible events themselves (tags, narratives and cold-start prompts read them)

    def subset(self, users: Sequence[str]) -> "SliceView":
        pos = {u: n for n, u in enumerate(self.users)}
        rows = [pos[u] for u in users]
        return SliceView(self.name, [self.users[r] for r in rows], self.targets[rows],
                         [self.histories[r] for r in rows], self.events[self.events["user_id"].isin(set(users))])


@dataclass
class Protocol:
    split: Split
    vocab: ItemVocab
    slices: dict[str, SliceView]
    long_tail: np.ndarray  # item indices outside the head
    k: int


@dataclass
class EvaluationRun:
    records: list[dict]
    settings: dict = field(default_factory=dict)


def long_tail_by_mass(counts: np.ndarray, mass: float) -> np.ndarray:
    """Item indices (1..V-1) outside the head: the fewest most-interacted items holding `mass` of all counts.

    counts: [V] training interactions per item index (column 0 = padding). Equal counts: lower index first.
    """
    counts = np.asarray(counts, dtype=np.float64)
    order = np.lexsort((np.arange(1, counts.size), -counts[1:])) + 1  # popular first
    cum = np.cumsum(counts[order])
    n_head = int(np.searchsorted(cum, mass * cum[-1] - 1e-9) + 1) if cum.size and cum[-1] > 0 else 0
    return np.sort(order[n_head:])


def sample_users(users: Sequence[str], n: int | None, seed: int) -> list[str]:
    """A seeded sample of `n` users, kept in the input order (all of them when n is None or too large)."""
    if n is None or n >= len(users):
        return list(users)
    keep = np.sort(np.random.default_rng(seed).choice(len(users), size=n, replace=False))
    return [users[i] for i in keep]


def build_protocol(dataset: Dataset, config: EvaluateConfig, split: Split | None = None) -> Protocol:
    """The split, the slices and the long-tail set; built once, shared by every row."""
    split = split or split_leave_one_out(dataset.events)
    vocab = ItemVocab.from_items(dataset.items)
    test = split.targets("test")
    users = sample_users([str(u) for u in test["user_id"]], config.max_users, config.sample_seed)
    targets = dict(zip(test["user_id"].astype(str), vocab.encode(test["item_id"])))
    visible = split.history("test")
    visible = visible[visible["user_id"].isin(set(users))].reset_index(drop=True)
    tail = long_tail_by_mass(np.bincount(vocab.encode(split.train["item_id"]), minlength=vocab.size),
                             config.long_tail_mass)

    def view(name: str, events: pd.DataFrame, who: list[str]) -> SliceView:
        seqs = user_sequences(events, vocab)
        empty = np.zeros(0, dtype=np.int64)
        return SliceView(name, who, np.array([targets[u] for u in who], dtype=np.int64),
                         [seqs.get(u, empty) for u in who], events[events["user_id"].isin(set(who))])

    slices = {"all": view("all", visible, users)}
    for n in config.cold_lengths:
        slices[f"cold_{n}"] = view(f"cold_{n}", truncate_history(visible, n), users)
    tail_set = set(tail.tolist())
    slices["long_tail"] = view("long_tail", visible, [u for u in users if targets[u] in tail_set])
    return Protocol(split=split, vocab=vocab, slices=slices, long_tail=tail, k=config.k)


def score_slice(scorer: SequenceScorer, view: SliceView, protocol: Protocol, batch_size: int = 256) -> dict[str, float]:
    """The five metrics of one scorer on one slice (the scorer sees `view.histories`, nothing else)."""
    k, n = protocol.k, len(view.users)
    ranks = np.empty(n, dtype=np.int64)
    tops = np.zeros((n, k), dtype=np.int64)
    for s in range(0, n, batch_size):
        hist, users = view.histories[s:s + batch_size], view.users[s:s + batch_size]
        scores = check_scores(scorer.score(hist, users), len(users), protocol.vocab.size, getattr(scorer, "name", "?"))
        ranks[s:s + len(users)] = target_ranks(scores, view.targets[s:s + batch_size], hist)
        tops[s:s + len(users)] = topk(scores, hist, k)
    if n == 0:
        return {}
    return {f"ndcg@{k}": ndcg_at_k(ranks, k), f"hr@{k}": hr_at_k(ranks, k), "mrr": mrr(ranks),
            f"coverage@{k}": coverage_at_k(tops, protocol.vocab.size - 1),
            f"long_tail_share@{k}": long_tail_share_at_k(tops, protocol.long_tail)}


# --- Scorers wrapping the trained models --------------------------------------------------------


class TowerScorer:
    """A three-tower model at a fixed beta with fixed user tags T_u (beta = 1: the user tower alone)."""

    def __init__(self, name: str, model, beta: float, tags: Mapping[str, Sequence[str]] | None = None):
        self.name, self.model, self.beta, self.tags = name, model, beta, dict(tags or {})

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        return self.model.score(histories, user_ids, user_tags=self.tags, beta=self.beta)


# --- The run ----------------------------------------------------------------------------------------


def tags_parquet(path: str | Path) -> Path:
    """A mined-tags Parquet, given itself or the `llmrec mine-interests` folder holding profiles.parquet."""
    path = Path(path)
    return path / "profiles.parquet" if path.is_dir() else path


def evaluate(dataset: Dataset, config: EvaluateConfig | None = None, backend=None,
             log: Callable[[str], None] = print) -> list[dict]:
    """Records (benchmark "offline_eval"; model, slice, metric, value = mean over seeds, std, seeds, n)."""
    return run_evaluation(dataset, config, backend, log).records


def run_evaluation(dataset: Dataset, config: EvaluateConfig | None = None, backend=None,
                   log: Callable[[str], None] = print,
                   checkpoint: Callable[[EvaluationRun], None] | None = None,
                   resume: Mapping | None = None) -> EvaluationRun:
    """Train and score every row of `config.models`; records plus the settings that froze them.

    `backend`: an `LLMBackend` for the re-ranking and cold-start rows; None with `config.use_llm` starts
    `make_backend(config.llm)` when such a row is first due and closes it after the first seed's LLM work.
    An LLM row that fails is left out with the error as its reason (the other rows still report).
    `checkpoint` receives the partial run (settings["complete"] False) after every finished (row, seed), so a
    run that is killed still leaves its finished rows behind.
    `resume`: the settings of an earlier (possibly partial) run; its finished (row, seed) pairs are taken
    over instead of retrained, where the split and the row's config are unchanged (`resumable_rows`).
    """
    from llmrec.eval.llm_rows import coldstart_rows, imagine_cold_histories, rerank_row
    from retrieval.baselines import ItemKNNScorer, PopularityScorer
    from retrieval.sasrec import train_sasrec
    from retrieval.train import heuristic_user_tags, read_tags_table, train_towers

    config = config or EvaluateConfig()
    t_start = time.perf_counter()
    proto = build_protocol(dataset, config)
    wanted = list(config.models)
    values: dict[tuple[str, str], list[dict[str, float]]] = {}
    seeds_of: dict[str, list[int]] = {}
    betas: dict[str, list[float]] = {}
    n_of: dict[tuple[str, str], int] = {}
    absent: dict[str, str] = {}
    reports: dict[str, list[dict]] = {}
    notes: dict[str, object] = {}
    cold = [s for s in proto.slices if s.startswith("cold_")]
    tags_cache: dict[str, dict[str, list[str]]] = {}
    raw: list[dict] = []  # one entry per (model, seed, slice): what a resumed run takes over
    finished: list[list] = []  # [model, seed] pairs whose every slice is scored

    def snapshot(complete: bool = False) -> EvaluationRun:
        records = _aggregate(values, seeds_of, betas, n_of, config)
        settings = {
            "evaluate_config": config.model_dump(mode="json"),
            "dataset": {"name": dataset.name, "users": int(dataset.events["user_id"].nunique()),
                        "items": len(dataset.items), "events": len(dataset.events)},
            "split_hash": proto.split.hash, "split_report": proto.split.report,
            "slices": {s: len(v.users) for s, v in proto.slices.items()},
            "long_tail": {"items": int(proto.long_tail.size), "catalogue": proto.vocab.size - 1,
                          "head_mass": config.long_tail_mass},
            "model_configs": {m: row_config(m, config) for m in rows},
            "absent": absent, "notes": notes, "model_reports": reports, "betas": betas,
            "seconds": round(time.perf_counter() - t_start, 1), "complete": complete,
            "raw": raw, "finished": finished,
        }
        return EvaluationRun(records=records, settings=settings)

    def add(model: str, seed: int, scorer: SequenceScorer, slices: Sequence[str], views=None) -> None:
        for s in slices:
            view = (views or proto.slices)[s]
            t0 = time.perf_counter()
            m = score_slice(scorer, view, proto, config.score_batch_size)
            if m:
                values.setdefault((model, s), []).append(m)
                n_of[(model, s)] = len(view.users)
                raw.append({"model": model, "seed": seed, "slice": s, "n": len(view.users), "metrics": m})
            log(f"[evaluate] {model} seed={seed} {s}: ndcg@{config.k}={m.get(f'ndcg@{config.k}', float('nan')):.4f} "
                f"(n={len(view.users)}, {time.perf_counter() - t0:.1f}s)")
        if seed not in seeds_of.setdefault(model, []):
            seeds_of[model].append(seed)

    def finish(model: str, seed: int) -> None:
        finished.append([model, seed])
        if checkpoint is not None:
            checkpoint(snapshot())

    def done(model: str, seed: int) -> bool:
        return [model, seed] in finished

    def slice_tags(s: str) -> dict[str, list[str]]:
        if s not in tags_cache:
            tags_cache[s] = heuristic_user_tags(dataset, proto.slices[s].events, config.towers.user_tags)
        return tags_cache[s]

    def tower_rows(model: str, seed: int, result, tags_for: Callable[[str], dict], slices: Sequence[str]) -> None:
        beta = float(result.report["beta"])
        betas.setdefault(model, []).append(beta)
        rep = {k: v for k, v in result.report.items() if k != "history"}
        reports.setdefault(model, []).append({"seed": seed, **rep})
        for s in slices:
            add(model, seed, TowerScorer(model, result.model, beta, tags_for(s)), [s])
        finish(model, seed)

    # Which rows can run at all.
    llm_tags: dict[str, tuple[dict, dict]] = {}
    for row, key in LLM_TAG_ROWS.items():
        path = getattr(config, key)
        if row not in wanted:
            continue
        if path is None:
            absent[row] = (f"no mined-tags Parquet given (--{key.replace('_', '-')}; produce one with "
                           "`llmrec mine-interests`)")
        else:
            llm_tags[row] = read_tags_table(tags_parquet(path))
    for row in ("three_tower_llm_rerank", "coldstart_early_fusion", "coldstart_late_fusion"):
        if row in wanted and not config.use_llm:
            absent[row] = "run with --no-llm (use_llm=False): rows that call the LLM were skipped"
    if "coldstart_none" in wanted and not config.use_llm:
        absent["coldstart_none"] = "compared only with the LLM cold-start rows, which --no-llm skipped"
    rows = [m for m in wanted if m not in absent]
    if resume is not None:
        taken = resumable_rows(resume, proto.split.hash, {m: row_config(m, config) for m in rows})
        for entry in resume.get("raw", []):
            if [entry["model"], entry["seed"]] in taken and entry["seed"] in config.seeds:
                values.setdefault((entry["model"], entry["slice"]), []).append(entry["metrics"])
                n_of[(entry["model"], entry["slice"])] = entry["n"]
                raw.append(entry)
        for model, seed in taken:
            if seed in config.seeds:
                finished.append([model, seed])
                if model in BASELINE_ROWS:
                    seeds_of[model] = list(config.seeds)
                else:
                    seeds_of.setdefault(model, []).append(seed)
                for rep in resume.get("model_reports", {}).get(model, []):
                    if rep.get("seed") == seed:
                        reports.setdefault(model, []).append(rep)
                        if model in resume.get("betas", {}):  # a fused row (SASRec reports carry no beta)
                            betas.setdefault(model, []).append(float(rep["beta"]))
        for key, note in resume.get("notes", {}).items():
            if any(m == key or key == "coldstart" for m, _ in taken):
                notes.setdefault(key, note)
        log(f"[evaluate] resumed {len(finished)} finished (row, seed) pairs from the earlier run")
    llm = {"backend": backend, "own": False}

    def get_backend():
        if llm["backend"] is None:  # started only when an LLM row is due: it holds GBs of memory
            from llmrec.llm import make_backend

            llm["backend"], llm["own"] = make_backend(config.llm), True
        return llm["backend"]

    def guarded(names: Sequence[str], fn: Callable[[], object]):
        """Run an LLM row; a failure leaves the row out with its reason instead of losing the whole run."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - reported in the settings and the Markdown
            for m in names:
                absent[m] = f"failed: {type(e).__name__}: {str(e)[:300]}"
                rows.remove(m)
                for key in [key for key in values if key[0] == m]:
                    del values[key]
            log(f"[evaluate] {', '.join(names)} failed: {type(e).__name__}: {e}")
            return None

    try:
        # Deterministic baselines: fitted and scored once; every seed would give the same numbers.
        baselines: dict[str, SequenceScorer] = {}
        if "popularity" in rows and not done("popularity", config.seeds[0]):
            baselines["popularity"] = PopularityScorer.fit(proto.split.train, proto.vocab)
        if "item_knn" in rows and not done("item_knn", config.seeds[0]):
            baselines["item_knn"] = ItemKNNScorer.fit(proto.split.train, proto.vocab, config.knn_neighbors,
                                                      config.knn_shrink)
        for name, scorer in baselines.items():
            add(name, config.seeds[0], scorer, proto.slices)
            seeds_of[name] = list(config.seeds)
            finish(name, config.seeds[0])
        imagined = None
        for seed in config.seeds:
            for loss in ("bce", "ce"):
                if f"sasrec_{loss}" in rows and not done(f"sasrec_{loss}", seed):
                    t0 = time.perf_counter()
                    scorer, rep = train_sasrec(proto.split, proto.vocab, config.sasrec.model_copy(
                        update={"loss": loss, "seed": seed}), log=lambda s, n=loss: log(f"[evaluate] sasrec_{n} {s}"))
                    reports.setdefault(f"sasrec_{loss}", []).append(
                        {"seed": seed, **{k: v for k, v in rep.items() if k != "curve"}})
                    log(f"[evaluate] sasrec_{loss} seed={seed} trained in {time.perf_counter() - t0:.0f}s "
                        f"(best epoch {rep['best_epoch']})")
                    add(f"sasrec_{loss}", seed, scorer, proto.slices)
                    finish(f"sasrec_{loss}", seed)
            tcfg = config.towers.model_copy(update={"seed": seed})
            if any(m in rows and not done(m, seed) and (m != "three_tower_llm_rerank" or seed == config.seeds[0])
                   for m in BASE_TOWER_ROWS):
                base = train_towers(dataset, proto.split, tcfg)
                log(f"[evaluate] three-tower seed={seed} trained: beta={base.report['beta']}")
                if "three_tower_notag" in rows and not done("three_tower_notag", seed):
                    res = type(base)(model=base.model, report={**base.report, "beta": 1.0})
                    tower_rows("three_tower_notag", seed, res, lambda s: {}, proto.slices)
                if "three_tower_heuristic_tags" in rows and not done("three_tower_heuristic_tags", seed):
                    tower_rows("three_tower_heuristic_tags", seed, base, slice_tags, proto.slices)
                if ("three_tower_llm_rerank" in rows and seed == config.seeds[0]
                        and not done("three_tower_llm_rerank", seed)):
                    notes["three_tower_llm_rerank"] = guarded(["three_tower_llm_rerank"], lambda: rerank_row(
                        dataset, proto, config, base, slice_tags("all"), get_backend(), add, seed))
                    if "three_tower_llm_rerank" in rows:
                        finish("three_tower_llm_rerank", seed)
                cold_rows = [m for m in COLDSTART_ROWS if m in rows and not done(m, seed)]
                if cold_rows and imagined is None:
                    imagined = guarded(cold_rows, lambda: imagine_cold_histories(dataset, proto, config,
                                                                                 get_backend(), cold))
                    if imagined is not None:
                        imagined, notes["coldstart"] = imagined
                if llm["own"] and llm["backend"] is not None:
                    llm["backend"].close()  # every LLM call is done after the first seed
                    llm["backend"] = None
                cold_rows = [m for m in COLDSTART_ROWS if m in rows and not done(m, seed)]
                if cold_rows and imagined is not None:
                    coldstart_rows(proto, config, base.model, imagined, cold_rows, add, seed)
                    for m in cold_rows:
                        finish(m, seed)
            for row, (tags, info) in llm_tags.items():
                if done(row, seed):
                    continue
                res = train_towers(dataset, proto.split, tcfg, llm_tags=tags, tags_info=info)
                # Mined tags summarise the whole visible history: not a cold user's, so cold slices are skipped.
                tower_rows(row, seed, res, lambda s, t=tags: t, ["all", "long_tail"])
                notes[row] = {"tags": info, "slices": "all and long_tail only: tags were mined from the full "
                              "visible history, which a cold user does not have"}
            for row, switch in ABLATIONS.items():
                if row in rows and not done(row, seed) and seed in (config.ablation_seeds or config.seeds):
                    res = train_towers(dataset, proto.split, tcfg.model_copy(update=switch))
                    tower_rows(row, seed, res, slice_tags, proto.slices)
    finally:
        if llm["own"] and llm["backend"] is not None:
            llm["backend"].close()
    return snapshot(complete=True)


def resumable_rows(settings: Mapping, split_hash: str, configs: Mapping[str, dict]) -> list[list]:
    """The [model, seed] pairs of an earlier run's settings that a new run may take over unchanged.

    Nothing when the split differs; per row, only when its config (as `row_config` freezes it) is equal.
    """
    if settings.get("split_hash") != split_hash:
        return []
    before = settings.get("model_configs", {})
    return [[m, s] for m, s in settings.get("finished", [])
            if m in configs and before.get(m) == configs[m]]


def row_config(model: str, config: EvaluateConfig) -> dict:
    """The config a row trains with (seed set per run): what the settings file freezes for it."""
    if model.startswith("sasrec_"):
        return config.sasrec.model_copy(update={"loss": model.split("_")[1]}).model_dump(mode="json")
    if model in ("popularity",):
        return {}
    if model == "item_knn":
        return {"neighbors": config.knn_neighbors, "shrink": config.knn_shrink}
    towers = config.towers.model_copy(update=ABLATIONS.get(model, {})).model_dump(mode="json")
    if model in LLM_TAG_ROWS:
        return {"towers": towers, "tags": getattr(config, LLM_TAG_ROWS[model])}
    if model == "three_tower_llm_rerank":
        return {"towers": towers, "rerank": config.rerank.model_dump(mode="json"), "top": config.rerank_top,
                "users": config.rerank_users, "llm": config.llm.model_dump(mode="json"),
                "narrative": config.narrative.model_dump(mode="json")}
    if model in COLDSTART_ROWS:
        return {"towers": towers, "beta": 1.0, "coldstart": config.coldstart.model_copy(
            update={"fusion": COLDSTART_ROWS[model] or config.coldstart.fusion}).model_dump(mode="json"),
            "users": config.coldstart_users, "llm": config.llm.model_dump(mode="json")}
    return {"towers": towers, "beta": 1.0 if model == "three_tower_notag" else "chosen on validation"}


def _aggregate(values, seeds_of, betas, n_of, config: EvaluateConfig) -> list[dict]:
    out = []
    for (model, s), runs in values.items():
        for metric in runs[0]:
            v = np.array([r[metric] for r in runs])
            ctx = {"model": model, "slice": s, "seeds": ",".join(str(x) for x in seeds_of[model]),
                   "n": n_of[(model, s)], "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "dataset": config.dataset}
            if model in betas:
                ctx["beta"] = ",".join(f"{b:g}" for b in betas[model])
            out.append(record(BENCHMARK, metric, float(v.mean()), "fraction", **ctx))
    return out
