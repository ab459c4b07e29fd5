"""The offline comparison: every row on one protocol (`llmrec.eval.protocol`), over several seeds.

`Evaluation` runs named steps: protocol -> baselines -> SASRec rows -> tower rows (with the LLM re-ranking
and cold-start rows built on the base towers) -> LLM-tag rows -> ablations -> aggregate. Each finished
(row, seed) is checkpointed, so a killed run leaves its rows behind and `--resume` takes them over.

Records: one per (row, slice, metric), value = mean over seeds, std the sample std (0 for one seed or a
deterministic row), plus "ndcg@K_diff_vs_sasrec_ce": the paired per-user NDCG difference against SASRec+ with
its bootstrap 95% interval (`lo`, `hi`, `significant`), seeds pooled per user (`llmrec.eval.stats`). The
`valid` slice holds validation numbers: choose rows there, report test.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from llmrec.bench import record
from llmrec.config import EvaluateConfig
from llmrec.data import Dataset
from llmrec.eval.llm_rows import coldstart_rows, imagine_cold_histories, ranker_row, rerank_row
from llmrec.eval.protocol import (Protocol, SliceView, build_protocol, long_tail_by_mass, require_as_of, sample_users,
                                  score_slice,
                                  score_view, tags_parquet)
from llmrec.eval.protocol import target_behaviors
from llmrec.eval.rows import (ABLATIONS, BASE_TOWER_ROWS, BASELINE_ROWS, COLDSTART_ROWS, ID_TOWER_ROWS,
                              LLM_COUNTERPARTS, LLM_TAG_ROWS, RANKER_ROWS, REFERENCE_ROW, ROUND_COUNTERPARTS,
                              SASREC_ROWS, TowerScorer, absent_rows, planned_pairs, resumable_rows, row_config)
from llmrec.eval.stats import paired_difference
from llmrec.eval.tag_metrics import tag_sources
from llmrec.eval.tables import FUSED_ROWS, strongest_baseline
from llmrec.progress import progress_bar
from retrieval.base import SequenceScorer

log = logging.getLogger(__name__)
BENCHMARK = "offline_eval"
__all__ = ["BENCHMARK", "Evaluation", "EvaluationRun", "Protocol", "SliceView", "build_protocol", "evaluate",
           "long_tail_by_mass", "run_evaluation", "sample_users", "score_slice"]


@dataclass
class EvaluationRun:
    records: list[dict]
    settings: dict = field(default_factory=dict)


@dataclass
class Scores:
    """Everything scored so far, per (row, slice): metric dicts and NDCG per user, one entry per seed."""

    values: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)
    per_user: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)
    run_seeds: dict[tuple[str, str], list[int | None]] = field(default_factory=dict)  # each entry's (`run_seed`)
    n_of: dict[tuple[str, str], int] = field(default_factory=dict)
    seeds_of: dict[str, list[int]] = field(default_factory=dict)
    betas: dict[str, list[float]] = field(default_factory=dict)

    def add(self, model: str, slice_name: str, n: int, metrics: dict, by_user: dict, seed: int | None = None) -> None:
        self.values.setdefault((model, slice_name), []).append(metrics)
        self.per_user.setdefault((model, slice_name), []).append(by_user)
        self.run_seeds.setdefault((model, slice_name), []).append(seed)
        self.n_of[(model, slice_name)] = n

    def drop(self, model: str) -> None:
        for table in (self.values, self.per_user, self.run_seeds, self.n_of):
            for key in [key for key in table if key[0] == model]:
                del table[key]

    def paired_runs(self, model: str, reference: str, slice_name: str) -> list[dict[str, float]] | None:
        """The reference's per-user NDCG entries to pair `model` with on one slice: only the seeds `model` ran
        when it ran on fewer of them (an LLM row on the first seed against its retriever's seed-0 model, not
        the mean of three trainings); every entry otherwise (a baseline scored once stands for every seed)."""
        ref = self.per_user.get((reference, slice_name))
        if ref is None:
            return None
        mine, theirs = self.run_seeds.get((model, slice_name), []), self.run_seeds[(reference, slice_name)]
        if None in mine or None in theirs or not set(mine) < set(theirs):
            return ref
        return [runs for runs, seed in zip(ref, theirs) if seed in mine]


def run_seed(model: str, seed: int) -> int | None:
    """The seed a row's scores belong to; None for a deterministic baseline, scored once for every seed."""
    return None if model in BASELINE_ROWS else seed


class Evaluation:
    """One run of `config` on `dataset`: build the protocol once, then train and score row by row."""

    def __init__(self, dataset: Dataset, config: EvaluateConfig, backend=None,
                 checkpoint: Callable[[EvaluationRun], None] | None = None):
        self.dataset, self.config, self.checkpoint = dataset, config, checkpoint
        self.t_start = time.perf_counter()
        self.proto = build_protocol(dataset, config)
        # What the trained rows get: no event of a held-out (cold) user, even where a trainer could read it.
        held = self.proto.split.holdout_users
        self.train_dataset = replace(dataset, events=dataset.events[
            ~dataset.events["user_id"].astype(str).isin(held)].reset_index(drop=True)) if held else dataset
        self.scores = Scores()
        self.absent = absent_rows(config)
        self.rows = [m for m in config.models if m not in self.absent]
        self.reports: dict[str, list[dict]] = {}
        self.notes: dict[str, object] = {}
        self.raw: list[dict] = []  # one entry per (model, seed, slice): what a resumed run takes over
        self.finished: list[list] = []  # [model, seed] pairs whose every slice is scored
        self.resumed = 0  # of them, taken over from an earlier run (`restore`)
        self.sources: dict[str, dict[str, str]] = {}  # LLM-tag row -> user -> profile source
        self.tags_cache: dict[str, dict[str, list[str]]] = {}
        self.backend, self.own_backend = backend, False
        self.served: str | None = None  # the merged model our backend serves (None: the base model)
        self.imagined = None
        self._content = None
        self.bar = None  # finished (row, seed) pairs, while `run` runs

    # --- bookkeeping ----------------------------------------------------------------------------

    def due(self, model: str, seed: int) -> bool:
        return model in self.rows and [model, seed] not in self.finished

    def add(self, model: str, seed: int, scorer: SequenceScorer, slices: Sequence[str],
            views: Mapping[str, SliceView] | None = None) -> None:
        """Score `scorer` on each slice (from `views`, default the protocol's) as (model, seed)."""
        for s in slices:
            view = (views or self.proto.slices)[s]
            t0 = time.perf_counter()
            got = score_view(scorer, view, self.proto, self.config.score_batch_size)
            if got.metrics:
                self.scores.add(model, s, len(view.users), got.metrics, got.ndcg_by_user, run_seed(model, seed))
                self.raw.append({"model": model, "seed": seed, "slice": s, "n": len(view.users),
                                 "metrics": got.metrics,
                                 "ndcg_by_user": {u: round(v, 6) for u, v in got.ndcg_by_user.items()}})
            ndcg = got.metrics.get(f"ndcg@{self.config.k}", float("nan"))
            log.info("[evaluate] %s seed=%d %s: ndcg@%d=%.4f (n=%d, %.1fs)", model, seed, s, self.config.k, ndcg,
                     len(view.users), time.perf_counter() - t0)
        if seed not in self.scores.seeds_of.setdefault(model, []):
            self.scores.seeds_of[model].append(seed)

    def finish(self, model: str, seed: int) -> None:
        self.finished.append([model, seed])
        if self.bar is not None:
            self.bar.update(1)
        if self.checkpoint is not None:
            self.checkpoint(self.snapshot())

    def snapshot(self, complete: bool = False) -> EvaluationRun:
        """Records and settings as they stand (settings["complete"] False until the last row is done)."""
        proto, dataset, config = self.proto, self.dataset, self.config
        settings = {
            "evaluate_config": config.model_dump(mode="json"),
            "dataset": {"name": dataset.name, "users": int(dataset.events["user_id"].nunique()),
                        "items": len(dataset.items), "events": len(dataset.events)},
            "split_hash": proto.split.hash, "split_report": proto.split.report,
            "target_behaviors": list(target_behaviors(dataset, config)),
            "slices": {s: len(v.users) for s, v in proto.slices.items()},
            "long_tail": {"items": int(proto.long_tail.size), "catalogue": proto.vocab.size - 1,
                          "head_mass": config.long_tail_mass},
            "model_configs": {m: row_config(m, config) for m in self.rows},
            "absent": self.absent, "notes": self.notes, "model_reports": self.reports, "betas": self.scores.betas,
            "seconds": round(time.perf_counter() - self.t_start, 1), "resumed_pairs": self.resumed,
            "complete": complete,
            "raw": self.raw, "finished": self.finished,
        }
        return EvaluationRun(records=aggregate(self.scores, config) + self.llm_share_records(), settings=settings)

    def llm_share_records(self) -> list[dict]:
        """Per LLM-tag row and scored slice: llm_share, the share of the slice's users whose tags came from a
        validated LLM answer, and fallback_share, the rest (a flagged fallback, a heuristic stand-in, no row in
        the table, or a table without a `source` column); then the cold-start rows' (`coldstart_share_records`)."""
        out = []
        for row, key in LLM_TAG_ROWS.items():
            if row not in self.scores.seeds_of or getattr(self.config, key) is None:
                continue
            test_path = getattr(self.config, key)
            for name, path in ((row, test_path), (f"{row}@valid", getattr(self.config, f"{key}_valid") or test_path)):
                if name not in self.sources:
                    self.sources[name] = tag_sources(tags_parquet(path))
            for (model, s), n in self.scores.n_of.items():
                if model != row:
                    continue
                users, sources = self.proto.slices[s].users, self.sources[f"{row}@valid" if s == "valid" else row]
                llm = sum(sources.get(u) == "llm" for u in users) / max(len(users), 1)
                out += self.share_records(row, s, llm, 1.0 - llm)
        return out + self.coldstart_share_records()

    def share_records(self, row: str, slice_name: str, llm: float, fallback: float) -> list[dict]:
        """The llm_share and fallback_share records of one (row, slice)."""
        ctx = {"model": row, "slice": slice_name, "seeds": ",".join(str(x) for x in self.scores.seeds_of[row]),
               "n": self.scores.n_of[(row, slice_name)], "dataset": self.config.dataset, "std": 0.0}
        return [record(BENCHMARK, "llm_share", llm, "fraction", **ctx),
                record(BENCHMARK, "fallback_share", fallback, "fraction", **ctx)]

    def coldstart_share_records(self) -> list[dict]:
        """Per cold-start fusion row and cold slice: llm_share, the share of the sampled users whose imagined
        history is a validated LLM answer (new or cached), and fallback_share, those served the flagged
        examples' fallback (from the slice's imagining stats in the notes)."""
        out = []
        stats = self.notes.get("coldstart") or {}
        for row in (r for r, fusion in COLDSTART_ROWS.items() if fusion is not None and r in self.scores.seeds_of):
            for s, st in stats.items():
                if not isinstance(st, dict) or (row, s) not in self.scores.n_of or not st.get("n_users"):
                    continue
                n = st["n_users"]
                out += self.share_records(row, s, (n - st["fallback"] - st.get("not_cold", 0)) / n,
                                          st["fallback"] / n)
        return out

    def restore(self, resume: Mapping) -> None:
        """Take over the finished (row, seed) pairs of an earlier run with the same split and row config."""
        config, scores = self.config, self.scores
        taken = [[m, s] for m, s in resumable_rows(resume, self.proto.split.hash,
                                                   {m: row_config(m, config) for m in self.rows})
                 if s in config.seeds]
        # A ranker row still to run re-ranks a model trained in this run: its retriever's first-seed pair is
        # trained and scored again rather than taken over, so the two are paired on the very same model (a
        # retrained model need not be the one an earlier run scored: code changes, run-to-run differences).
        first = config.seeds[0]
        again = [[RANKER_ROWS[r], first] for r in RANKER_ROWS if r in self.rows and [r, first] not in taken]
        taken = [pair for pair in taken if pair not in again]
        for entry in resume.get("raw", []):
            if [entry["model"], entry["seed"]] in taken:
                scores.add(entry["model"], entry["slice"], entry["n"], entry["metrics"],
                           entry.get("ndcg_by_user", {}), run_seed(entry["model"], entry["seed"]))
                self.raw.append(entry)
        self.resumed = len(taken)
        for model, seed in taken:
            self.finished.append([model, seed])
            if model in BASELINE_ROWS:
                scores.seeds_of[model] = list(config.seeds)
            else:
                scores.seeds_of.setdefault(model, []).append(seed)
            for rep in resume.get("model_reports", {}).get(model, []):
                if rep.get("seed") == seed:
                    self.reports.setdefault(model, []).append(rep)
                    if model in resume.get("betas", {}):  # a fused row (SASRec reports carry no beta)
                        scores.betas.setdefault(model, []).append(float(rep["beta"]))
        for key, note in resume.get("notes", {}).items():
            if any(m == key or key == "coldstart" for m, _ in taken):
                self.notes.setdefault(key, note)
        log.info("[evaluate] resumed %d finished (row, seed) pairs from the earlier run", len(self.finished))

    # --- the LLM --------------------------------------------------------------------------------

    def get_backend(self, adapter: str | None = None):
        """The LLM backend, started only when an LLM row is due (it holds GBs of memory). Ours serves the base
        model, or with `adapter` that adapter merged into the weights (one engine at a time: switching closes
        the other); a backend the caller passed serves everything, adapters per call."""
        if self.backend is not None and not self.own_backend:
            return self.backend
        from llmrec.llm import make_backend
        from llmrec.llm.model import merged_model

        served = None if adapter is None else str(merged_model(self.config.llm.model, adapter))
        if self.backend is not None and served != self.served:
            self.close_backend()
        if self.backend is None:
            llm = self.config.llm if served is None else self.config.llm.model_copy(update={"model": served})
            self.backend, self.own_backend, self.served = make_backend(llm), True, served
        return self.backend

    def close_backend(self) -> None:
        if self.own_backend and self.backend is not None:
            self.backend.close()
            self.backend = None

    def guarded(self, names: Sequence[str], fn: Callable[[], object]):
        """Run an LLM row; a failure leaves the row out with its reason instead of losing the whole run."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - reported in the settings and the Markdown
            for m in names:
                self.absent[m] = f"failed: {type(e).__name__}: {str(e)[:300]}"
                self.rows.remove(m)
                self.scores.drop(m)
            log.warning("[evaluate] %s failed: %s: %s", ", ".join(names), type(e).__name__, e)
            return None

    # --- the steps ------------------------------------------------------------------------------

    def run(self, resume: Mapping | None = None) -> EvaluationRun:
        if resume is not None:
            self.restore(resume)
        self.bar = progress_bar(desc="evaluate", total=planned_pairs(self.rows, self.config), unit="row",
                                initial=len(self.finished))
        try:
            if self.config.tune_towers and any(r.startswith("three_tower") or r.startswith("coldstart")
                                               for r in self.rows):
                self.tune_towers()
            self.score_baselines()
            for seed in self.config.seeds:
                self.score_sasrec(seed)
                self.score_base_towers(seed)
                self.score_id_towers(seed)
                self.score_llm_tag_rows(seed)
                self.score_ablations(seed)
        finally:
            self.bar.close()
            self.bar = None
            self.close_backend()
        return self.snapshot(complete=True)

    def tune_towers(self) -> None:
        """Pick the tower settings on validation (first seed), then train every tower row with them."""
        from retrieval.tune import tune_towers

        t0 = time.perf_counter()
        base = self.config.towers.model_copy(update={"seed": self.config.seeds[0]})
        tuned = tune_towers(self.proto.split, self.train_dataset, base, dict(self.config.tower_grid))
        self.notes["tower_search"] = {**tuned.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
        log.info("[evaluate] tower search: %s chosen on validation", tuned.to_dict()["best"])
        self.config = self.config.model_validate({**self.config.model_dump(),
                                                  "towers": tuned.config.model_copy(update={"seed": 0}).model_dump()})

    def score_baselines(self) -> None:
        """Deterministic baselines, fitted on the training events and scored once for every seed."""
        from retrieval.baselines import ItemKNNScorer, PopularityScorer

        from llmrec.data.behaviors import training_events

        seed, vocab = self.config.seeds[0], self.proto.vocab
        train = training_events(self.proto.split.train, self.train_dataset.behavior_vocab)  # no skip is a positive
        fit = {"popularity": lambda: PopularityScorer.fit(train, vocab),
               "item_knn": lambda: ItemKNNScorer.fit(train, vocab, self.config.knn_neighbors, self.config.knn_shrink)}
        for name in BASELINE_ROWS:
            if self.due(name, seed):
                self.add(name, seed, fit[name](), self.proto.slices)
                self.scores.seeds_of[name] = list(self.config.seeds)
                self.finish(name, seed)

    def score_sasrec(self, seed: int) -> None:
        from retrieval.sasrec import train_sasrec

        for row, switch in SASREC_ROWS.items():
            # A ranker row needs the model even where the retriever's own row is not run (`--models` without it);
            # under --resume a due ranker row makes the retriever's first seed due again (`restore`).
            if not self.due(row, seed) and not self.ranker_due(row, seed):
                continue
            t0 = time.perf_counter()
            cfg = self.config.sasrec.model_copy(update={**switch, "seed": seed})
            log.info("[evaluate] %s seed=%d training", row, seed)
            scorer, rep = train_sasrec(self.proto.split, self.proto.vocab, cfg,
                                       item_features=self.content_matrix() if cfg.content_features else None,
                                       behaviors=self.train_dataset.behavior_vocab)
            log.info("[evaluate] %s seed=%d trained in %.0fs (best epoch %d)", row, seed, time.perf_counter() - t0,
                     rep["best_epoch"])
            if self.due(row, seed):
                self.reports.setdefault(row, []).append({"seed": seed, **{k: v for k, v in rep.items()
                                                                          if k != "curve"}})
                self.add(row, seed, scorer, self.proto.slices)
                self.finish(row, seed)
            self.score_ranker(row, seed, lambda s, sc=scorer: sc)

    def ranker_due(self, base_row: str, seed: int) -> list[str]:
        """The listwise ranker rows over `base_row` still to run at `seed` (first seed only, like every LLM row)."""
        return [r for r, b in RANKER_ROWS.items()
                if b == base_row and seed == self.config.seeds[0] and self.due(r, seed)]

    def score_ranker(self, base_row: str, seed: int, base_for: Callable[[str], SequenceScorer]) -> None:
        """The listwise LLM ranker rows over `base_row`."""
        def ranker(row: str) -> dict:
            backend = self.get_backend(self.config.ranker_adapter)  # ours serves the adapter merged
            return ranker_row(self.dataset, self.proto, self.config, row, base_for, backend, self.add, seed,
                              None if self.own_backend else self.config.ranker_adapter)

        for row in self.ranker_due(base_row, seed):
            self.notes[row] = self.guarded([row], lambda r=row: ranker(r))
            if row in self.rows:
                self.finish(row, seed)

    def content_matrix(self) -> np.ndarray:
        """(V, F) item content rows for sasrec_ce_content: the very features the towers' item tower reads."""
        if self._content is None:
            from retrieval.encoder import TextEncoder, build_item_features
            from retrieval.sasrec import item_content_matrix

            towers = self.config.towers
            items = [self.dataset.item_index[i] for i in self.proto.vocab.ids]
            f = build_item_features(items, TextEncoder(towers.encoder, towers.cache_dir, towers.encoder_batch_size),
                                    towers.year_bucket)
            self._content = item_content_matrix(f.text, f.genres, f.year, f.n_year_buckets)
        return self._content

    def slice_tags(self, s: str) -> dict[str, list[str]]:
        """Heuristic user tags from exactly the events slice `s` shows (a cold user's few events)."""
        from retrieval.train import heuristic_user_tags

        if s not in self.tags_cache:
            self.tags_cache[s] = heuristic_user_tags(self.dataset, self.proto.slices[s].events,
                                                     self.config.towers.user_tags)
        return self.tags_cache[s]

    def score_towers(self, model: str, seed: int, result, tags_for: Callable[[str], dict],
                     slices: Sequence[str]) -> None:
        beta = float(result.report["beta"])
        self.scores.betas.setdefault(model, []).append(beta)
        self.reports.setdefault(model, []).append(
            {"seed": seed, **{k: v for k, v in result.report.items() if k != "history"}})
        for s in slices:
            self.add(model, seed, TowerScorer(model, result.model, beta, tags_for(s)), [s])
        self.finish(model, seed)

    def score_base_towers(self, seed: int) -> None:
        """One base three-tower training serves the no-tag, heuristic-tag, re-ranking and cold-start rows."""
        from retrieval.train import train_towers

        first = seed == self.config.seeds[0]
        if not (any(self.due(m, seed) and (m != "three_tower_llm_rerank" or first) for m in BASE_TOWER_ROWS)
                or self.ranker_due("three_tower_heuristic_tags", seed)):  # LLM rows: first seed only
            return
        base = train_towers(self.train_dataset, self.proto.split, self.config.towers.model_copy(update={"seed": seed}))
        log.info("[evaluate] three-tower seed=%d trained: beta=%s", seed, base.report["beta"])
        if self.due("three_tower_notag", seed):
            res = type(base)(model=base.model, report={**base.report, "beta": 1.0})
            self.score_towers("three_tower_notag", seed, res, lambda s: {}, self.proto.slices)
        if self.due("three_tower_heuristic_tags", seed):
            self.score_towers("three_tower_heuristic_tags", seed, base, self.slice_tags, self.proto.slices)
        beta = float(base.report["beta"])
        self.score_ranker("three_tower_heuristic_tags", seed,
                          lambda s: TowerScorer("three_tower_heuristic_tags", base.model, beta, self.slice_tags(s)))
        if first and self.due("three_tower_llm_rerank", seed):
            self.notes["three_tower_llm_rerank"] = self.guarded(["three_tower_llm_rerank"], lambda: rerank_row(
                self.dataset, self.proto, self.config, base, self.slice_tags("all"), self.get_backend(), self.add,
                seed))
            if "three_tower_llm_rerank" in self.rows:
                self.finish("three_tower_llm_rerank", seed)
        self.score_coldstart(seed, base.model)

    def score_id_towers(self, seed: int) -> None:
        """Towers without text and profile features, user tower alone: the tower architecture minus content."""
        from retrieval.train import train_towers

        for row, switch in ID_TOWER_ROWS.items():
            if self.due(row, seed):
                res = train_towers(self.train_dataset, self.proto.split,
                                   self.config.towers.model_copy(update={"seed": seed, **switch}))
                res = type(res)(model=res.model, report={**res.report, "beta": 1.0})
                self.score_towers(row, seed, res, lambda s: {}, self.proto.slices)

    def score_coldstart(self, seed: int, model) -> None:
        """Imagined histories (LLM, once per run) fused into the cold users' few events; user tower alone."""
        cold = [s for s in self.proto.slices if s.startswith("cold_user_")]
        due = [m for m in COLDSTART_ROWS if self.due(m, seed)]
        if due and self.imagined is None:
            got = self.guarded(due, lambda: imagine_cold_histories(self.dataset, self.proto, self.config,
                                                                    self.get_backend(), cold))
            if got is not None:
                self.imagined, self.notes["coldstart"] = got
        self.close_backend()  # every LLM call is done after the first seed
        due = [m for m in COLDSTART_ROWS if self.due(m, seed)]
        if due and self.imagined is not None:
            coldstart_rows(self.proto, self.config, model, self.imagined, due, self.add, seed,
                           self.train_dataset.behavior_vocab)
            for m in due:
                self.finish(m, seed)

    def score_llm_tag_rows(self, seed: int) -> None:
        from retrieval.train import read_tags_table, train_towers

        for row, key in LLM_TAG_ROWS.items():
            if not self.due(row, seed):
                continue
            tags, info = read_tags_table(tags_parquet(getattr(self.config, key)))
            valid_path = getattr(self.config, f"{key}_valid")
            if valid_path is None:
                valid_tags, valid_info = tags, info
            else:
                require_as_of(valid_path, "valid")
                valid_tags, valid_info = read_tags_table(tags_parquet(valid_path))
            cfg = self.config.towers.model_copy(update={"seed": seed})
            # Training, early stopping and beta read the validation-time tags; test slices the test-time ones.
            res = train_towers(self.train_dataset, self.proto.split, cfg, llm_tags=valid_tags, tags_info=valid_info)
            self.score_towers(row, seed, res, lambda s, t=tags, v=valid_tags: v if s == "valid" else t,
                              ["all", "valid", "long_tail"])
            when = ("valid: tags mined as of the validation time (no leak), test slices: as of the test time"
                    if valid_path else "mined as of the test time, so the valid numbers of this row are optimistic: "
                    "they are marked, and the verdict never chooses this row on them; its beta and early stopping "
                    "were chosen on them too")
            self.notes[row] = {"tags": info, **({"tags_valid": valid_info} if valid_path else {}),
                               "slices": "all, valid and long_tail only: tags were mined from the full visible "
                               f"history, which a short or cold user does not have ({when})"}

    def score_ablations(self, seed: int) -> None:
        from retrieval.train import train_towers

        if seed not in (self.config.ablation_seeds or self.config.seeds):
            return
        for row, switch in ABLATIONS.items():
            if self.due(row, seed):
                cfg = self.config.towers.model_copy(update={"seed": seed, **switch})
                self.score_towers(row, seed, train_towers(self.train_dataset, self.proto.split, cfg), self.slice_tags,
                                  self.proto.slices)


def aggregate(scores: Scores, config: EvaluateConfig) -> list[dict]:
    """Mean/std over seeds per (row, slice, metric), plus the paired NDCG difference against SASRec+, for each
    LLM row against the same model without its LLM stage (`LLM_COUNTERPARTS`, records marked
    comparison="llm_gain"), and for the fused rows against the strongest baseline (chosen on validation) when
    that is not SASRec+."""
    out, contexts = [], {}
    for (model, s), runs in scores.values.items():
        ctx = contexts[(model, s)] = {"model": model, "slice": s, "n": scores.n_of[(model, s)],
                                      "seeds": ",".join(str(x) for x in scores.seeds_of[model]),
                                      "dataset": config.dataset}
        if model in scores.betas:
            ctx["beta"] = ",".join(f"{b:g}" for b in scores.betas[model])
        if s == "valid" and model in LLM_TAG_ROWS and getattr(config, f"{LLM_TAG_ROWS[model]}_valid") is None:
            # Tags mined as of the test time saw the validation target: never a basis for choosing this row.
            ctx["optimistic"] = True
        for metric in runs[0]:
            v = np.array([r[metric] for r in runs])
            out.append(record(BENCHMARK, metric, float(v.mean()), "fraction",
                              **ctx, std=float(v.std(ddof=1)) if v.size > 1 else 0.0))
        # The LLM stage's own gain, on the users both rows scored (one record when the counterpart is SASRec+).
        without = LLM_COUNTERPARTS.get(model)
        gain_ctx = {**ctx, "comparison": "llm_gain", "reference": without}
        out += difference_record(scores, config, model, s, REFERENCE_ROW,
                                 gain_ctx if without == REFERENCE_ROW else ctx)
        if without not in (None, REFERENCE_ROW):
            out += difference_record(scores, config, model, s, without, gain_ctx)
        for earlier in ROUND_COUNTERPARTS.get(model, ()):
            out += difference_record(scores, config, model, s, earlier,
                                     {**ctx, "comparison": "self_training_gain", "reference": earlier})
    leader = strongest_baseline(out, config.k)
    if leader is not None and leader != REFERENCE_ROW:
        for (model, s), ctx in contexts.items():
            if model in FUSED_ROWS:
                out += difference_record(scores, config, model, s, leader, ctx)
    return out


def difference_record(scores: Scores, config: EvaluateConfig, model: str, slice_name: str, reference: str,
                      ctx: dict) -> list[dict]:
    """The paired per-user NDCG difference of `model` against `reference` on one slice, as a one-record list
    (empty when `reference` has no scores there, or is `model`)."""
    ref = scores.paired_runs(model, reference, slice_name)
    if model == reference or ref is None:
        return []
    d = paired_difference(scores.per_user[(model, slice_name)], ref, n_boot=config.bootstrap_samples,
                          seed=config.sample_seed)
    if d is None:
        return []
    return [record(BENCHMARK, f"ndcg@{config.k}_diff_vs_{reference}", d.mean, "fraction", **{**ctx, "n": d.n},
                   std=0.0, lo=d.lo, hi=d.hi, significant=d.significant)]


def evaluate(dataset: Dataset, config: EvaluateConfig | None = None, backend=None) -> list[dict]:
    """Records (benchmark "offline_eval"; model, slice, metric, value = mean over seeds, std, seeds, n)."""
    return run_evaluation(dataset, config, backend).records


def run_evaluation(dataset: Dataset, config: EvaluateConfig | None = None, backend=None,
                   checkpoint: Callable[[EvaluationRun], None] | None = None,
                   resume: Mapping | None = None) -> EvaluationRun:
    """Train and score every row of `config.models`; records plus the settings that froze them.

    `backend`: an `LLMBackend` for the re-ranking and cold-start rows; None with `config.use_llm` starts
    `make_backend(config.llm)` when such a row is first due and closes it after the first seed's LLM work.
    `checkpoint` receives the partial run after every finished (row, seed). `resume`: the settings of an
    earlier (possibly partial) run; its finished (row, seed) pairs are taken over instead of retrained.
    """
    return Evaluation(dataset, config or EvaluateConfig(), backend, checkpoint).run(resume)
