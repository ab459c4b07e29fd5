"""The offline comparison as a reader sees it: one Markdown report and two PNG plots beside the records.

Everything is computed from the records `llmrec.eval.run` wrote and its settings (`llmrec.eval.tables`,
`llmrec.eval.plots`); file names are stable: NAME.md, NAME-ndcg-by-slice.png, NAME-ndcg-by-history.png next to
NAME.json and NAME.settings.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from llmrec.eval.plots import plot_ndcg_by_history, plot_ndcg_by_slice
from llmrec.eval.rows import LLM_TAG_ROWS, RANKER_ROWS
from llmrec.eval.tables import (BASELINE, FALLBACK_LIMIT, diff_table, llm_gain_table, render_table, share_table,
                                strongest_baseline, table_values, target_lines)

__all__ = ["render_markdown", "target_lines", "write_report"]
ATTRIBUTION = {
    "sasrec_ce_content": "SASRec+ with the towers' item content (frozen text vectors, genres, year, linearly "
                         "projected and added to the item id embedding): how much of a tower gain is content.",
    "three_tower_ids_only": "the three-tower model without text and profile features (ids, genres, year), user "
                            "tower alone: the architecture without the content.",
}


def run_time(settings: dict) -> str:
    """The run time as measured: a resumed run only times its own invocation, and says so."""
    seconds, resumed = settings.get("seconds", "?"), settings.get("resumed_pairs", 0)
    if resumed:
        return (f"run time of the last invocation: {seconds} s ({resumed} finished (row, seed) pairs were taken "
                "over from earlier invocations, whose time is not included)")
    return f"run time: {seconds} s"


def render_markdown(records: Sequence[dict], settings: dict, plots: Sequence[Path] = ()) -> str:
    """The whole report: settings, the two tables, the targets, the other metrics, notes and plots."""
    cfg = settings.get("evaluate_config", {})
    k = cfg.get("k", 10)
    git = settings.get("git_commit") or {}
    commit = f"{git.get('commit', '?')[:12]}{' + uncommitted changes' if git.get('dirty') else ''}"
    lines = [
        f"# Offline comparison: {settings.get('dataset', {}).get('name', '?')}", "",
        f"Command: `{settings.get('command', 'llmrec evaluate')}`  ",
        f"Git commit: {commit}; split hash: {settings.get('split_hash', '?')}; "
        f"seeds: {', '.join(map(str, cfg.get('seeds', [])))}; {run_time(settings)}.", "",
        *([] if settings.get("complete", True) else
          ["**Partial report: the run is still going (or was stopped); rows below are the finished ones.**", ""]),
        "Protocol: leave-one-out by time (last event = test, the one before = validation), full-catalogue "
        "ranking with pessimistic ties, the items of the history shown to the model excluded. "
        f"{cfg.get('cold_user_share', 0):.0%} of the users (seed {cfg.get('cold_user_seed', 0)}; "
        f"{settings.get('split_report', {}).get('holdout_users', 0)} users) are held out of every model's "
        "training: `cold_user_N` shows such a user's first N events and asks for event N+1 (true cold start). "
        "`short_N` shows a warm user only the last N events before the test item. `valid` is the validation "
        "target with the training history: rows are chosen there. Long tail: items outside the most popular "
        f"ones holding {cfg.get('long_tail_mass', 0.8):.0%} of training interactions. Values are test results "
        "(except `valid`), mean ± sample std over seeds; ▲/▼: the paired per-user NDCG difference against "
        f"SASRec+ ({BASELINE}) has a 95% bootstrap interval above/below 0.", "",
        f"## NDCG@{k}", "", render_table(records, f"ndcg@{k}", k), "",
        f"## HR@{k}", "", render_table(records, f"hr@{k}", k), "",
        f"## NDCG@{k} difference vs SASRec+ (paired over users, seeds pooled; 95% bootstrap interval, "
        "* significant)", "", *diff_table(records, k), "",
        *llm_gain_lines(records, k),
        f"## Verdict (fused three-tower vs SASRec+, NDCG@{k})", "", *target_lines(records, k), "",
        *leader_verdict(records, k),
        f"## All users: MRR, coverage@{k}, long-tail share@{k}", "",
        "| model | mrr | coverage | long-tail share |", "|---|---|---|---|",
    ]
    mrr, cov, tail = (table_values(records, m) for m in ("mrr", f"coverage@{k}", f"long_tail_share@{k}"))
    for model in mrr:
        cells = [t.get(model, {}).get("all") for t in (mrr, cov, tail)]
        lines.append(f"| {model} | " + " | ".join(f"{c['value']:.4f} ± {c['std']:.4f}" if c else "–" for c in cells)
                     + " |")
    shares = share_table(records)
    if shares:
        lines += ["", f"## LLM share (rows whose LLM stage fell back for more than {FALLBACK_LIMIT:.0%} of users "
                  "are marked)", "", *shares]
    present = {r["model"] for r in records}
    attribution = [f"- {m}: {why}" for m, why in ATTRIBUTION.items() if m in present]
    if attribution:
        lines += ["", "## Attribution rows (content vs architecture vs LLM)", "", *attribution]
    lines += ["", "## Rows left out", ""]
    absent = settings.get("absent", {})
    lines += [f"- {m}: {why}" for m, why in absent.items()] or ["- none"]
    notes = settings.get("notes", {})
    if notes:
        lines += ["", "## Notes", ""]
        rr = notes.get("three_tower_llm_rerank")
        if rr:
            same = rr.get("base_on_same_users", {})
            lines.append(f"- three_tower_llm_rerank: top {rr['top']} of the fused three-tower re-ordered by the "
                         f"360Brew Yes/No log-odds ({rr['backend']} backend) for a seeded sample of "
                         f"{rr['n_users']} users, seed {rr['seed']} only, {rr['seconds']} s; the three-tower "
                         f"without re-ranking on the same users: NDCG@{k} {same.get(f'ndcg@{k}', float('nan')):.4f},"
                         f" HR@{k} {same.get(f'hr@{k}', float('nan')):.4f}.")
        for m, retriever in RANKER_ROWS.items():
            rk = notes.get(m)
            if rk:
                same = rk.get("base_on_same_users", {})
                by_lambda = ", ".join(f"{float(lam):g}: {v:.4f}" for lam, v in rk["valid_ndcg_by_lambda"].items())
                top = settings.get("evaluate_config", {}).get("listwise", {}).get("candidates", "K")
                lines.append(f"- {m}: listwise ranker over {retriever}'s top {top} (adapter {rk['adapter'] or 'none'}"
                             f", {rk['backend']} backend) for a seeded sample of {rk['n_users']} users, seed "
                             f"{rk['seed']} only; lambda {rk['lambda']:g} chosen on their validation targets (valid "
                             f"NDCG@{k} by lambda: {by_lambda}). Cost per prompt (one per user): "
                             f"{rk.get('prefill_tokens_per_prompt', float('nan')):.0f} prefill tokens, "
                             f"{rk.get('seconds_per_prompt', float('nan')):.2f} s (adapter {rk.get('served', '?')}). "
                             f"{retriever} on the same users: NDCG@{k} {same.get(f'ndcg@{k}', float('nan')):.4f}.")
        cs = notes.get("coldstart")
        if cs:
            lines.append(f"- coldstart_*: user tower alone (beta = 1) on up to {cs['n_users']} sampled held-out "
                         "users per cold-user slice; imagined histories generated once per slice and reused for every seed. "
                         "Per slice: " + "; ".join(
                             f"{s}: {v.get('n_matched', 0)}/{v.get('n_imagined', 0)} imagined items matched, "
                             f"{v.get('fallback', 0)} fallbacks, {v.get('seconds', 0):.0f} s"
                             for s, v in cs.items() if isinstance(v, dict)) + ".")
        search = notes.get("tower_search")
        if search:
            trials = "; ".join(f"{', '.join(f'{key} {val}' for key, val in t['settings'].items())}: "
                               f"{t['valid_ndcg@10']:.4f} (best epoch {t['best_epoch']})" for t in search["trials"])
            lines.append(f"- Tower settings searched on validation before any tower row trained (first seed, "
                         f"{search['seconds']:.0f} s); every tower row uses the winner "
                         f"{', '.join(f'{key} {val}' for key, val in search['best'].items())}. "
                         f"Valid NDCG@{k}: {trials}.")
        for m in LLM_TAG_ROWS:
            if m in notes:
                lines.append(f"- {m}: {notes[m]['slices']}; tags table {notes[m]['tags'].get('path')}.")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def llm_gain_lines(records: Sequence[dict], k: int = 10) -> list[str]:
    """The section on what each LLM stage adds over the same model without it (nothing when no LLM row ran)."""
    table = llm_gain_table(records, k)
    if not table:
        return []
    return [f"## What the LLM stage adds: NDCG@{k} difference against the same model without it (paired over "
            "users, seeds pooled; 95% bootstrap interval, * significant)", "", *table, ""]


def leader_verdict(records: Sequence[dict], k: int = 10) -> list[str]:
    """The same verdict against the strongest baseline, when that is not SASRec+ (chosen on validation)."""
    leader = strongest_baseline(records, k)
    if leader is None or leader == BASELINE:
        return []
    return [f"## Verdict against the strongest baseline: {leader} (best validation NDCG@{k} of the baselines)", "",
            *target_lines(records, k, reference=leader), ""]


def write_report(records: Sequence[dict], settings: dict, md_path: str | Path) -> list[Path]:
    """Write the Markdown report and its two plots next to it; returns the paths written."""
    md_path = Path(md_path)
    k = settings.get("evaluate_config", {}).get("k", 10)
    plots = [plot_ndcg_by_slice(records, md_path.with_name(f"{md_path.stem}-ndcg-by-slice.png"), k),
             plot_ndcg_by_history(records, md_path.with_name(f"{md_path.stem}-ndcg-by-history.png"), k)]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(render_markdown(records, settings, plots))
    tmp.replace(md_path)
    return [md_path, *plots]
