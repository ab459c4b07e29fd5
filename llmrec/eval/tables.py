"""The Markdown tables of the offline comparison, computed from the records alone (nothing typed in by hand).

The verdict compares the fused three-tower row with SASRec+ (`sasrec_ce`) on NDCG@10: >= 1.05x on all users
and >= 1.3x on each short and cold-user slice, and again with the strongest baseline, which differs by dataset
(item-kNN on Amazon Magazine, SASRec+ with item content on ML-100K). Which fused row is judged and which baseline
leads are both chosen on the VALIDATION slice (`valid`), never on test: choosing the best of several rows by
their test score would inflate (or deflate) the ratio.
"""

from __future__ import annotations

from typing import Sequence

SLICE_ORDER = ("all", "short_1", "short_3", "short_5", "cold_user_0", "cold_user_1", "cold_user_3", "cold_user_5",
               "long_tail", "valid")
FUSED_ROWS = ("three_tower_heuristic_tags", "three_tower_llm_tags", "three_tower_llm_lora_tags",
              "three_tower_llm_self_tags", "three_tower_llm_self2_tags")
BASELINE = "sasrec_ce"
# Rows that may lead as "the strongest baseline": everything that is not a three-tower row.
BASELINE_CANDIDATES = ("popularity", "item_knn", "sasrec_bce", "sasrec_ce", "sasrec_ce_content")
TARGET_ALL, TARGET_COLD = 1.05, 1.3
FALLBACK_LIMIT = 0.2  # rows whose LLM stage fell back for more than this share of users are marked


def diff_metric(k: int, reference: str = BASELINE) -> str:
    return f"ndcg@{k}_diff_vs_{reference}"


def history_length(slice_name: str) -> int:
    """N of `short_N` / `cold_user_N`."""
    return int(slice_name.rsplit("_", 1)[1])


def table_values(records: Sequence[dict], metric: str) -> dict[str, dict[str, dict]]:
    """model -> slice -> the record of `metric`, models in first-seen order."""
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        if r["metric"] == metric:
            out.setdefault(r["model"], {})[r["slice"]] = r
    return out


def slices_of(records: Sequence[dict]) -> list[str]:
    seen = {r["slice"] for r in records}
    return [s for s in SLICE_ORDER if s in seen] + sorted(seen - set(SLICE_ORDER))


def significance_mark(diff: dict | None) -> str:
    """"▲" / "▼": significantly above / below SASRec+ (the 95% interval of the paired difference excludes 0)."""
    if not diff or not diff.get("significant"):
        return ""
    return " ▲" if diff["value"] > 0 else " ▼"


def fallback_rows(records: Sequence[dict]) -> set[str]:
    """Rows with a fallback_share above FALLBACK_LIMIT on any slice."""
    return {r["model"] for r in records if r["metric"] == "fallback_share" and r["value"] > FALLBACK_LIMIT}


def render_table(records: Sequence[dict], metric: str, k: int = 10) -> str:
    """One row per model, one column per slice, "mean ± std"; "n=" marks a user sample, ▲/▼ significance."""
    values, slices = table_values(records, metric), slices_of(records)
    diffs = table_values(records, diff_metric(k)) if metric == f"ndcg@{k}" else {}
    full_n = {s: max((r["n"] for r in records if r["slice"] == s), default=0) for s in slices}
    flagged = fallback_rows(records)
    lines = ["| model | beta | " + " | ".join(slices) + " |", "|---|---|" + "---|" * len(slices)]
    for model, row in values.items():
        beta = next((r.get("beta") for r in row.values() if r.get("beta")), "")
        cells = []
        for s in slices:
            r = row.get(s)
            if r is None:
                cells.append("–")
                continue
            cell = f"{r['value']:.4f} ± {r['std']:.4f}" + significance_mark(diffs.get(model, {}).get(s))
            if r.get("optimistic"):
                cell += " (optimistic)"
            if r["n"] != full_n[s]:
                cell += f" (n={r['n']})"
            cells.append(cell)
        name = f"{model} (fallback > {FALLBACK_LIMIT:.0%})" if model in flagged else model
        lines.append(f"| {name} | {beta} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diff_cell(diff: dict | None) -> str:
    """A paired difference record as "mean [lo, hi]", * when significant; "–" for none."""
    if not diff:
        return "–"
    return f"{diff['value']:+.4f} [{diff['lo']:+.4f}, {diff['hi']:+.4f}]{'*' if diff.get('significant') else ''}"


def diff_table(records: Sequence[dict], k: int = 10) -> list[str]:
    """Paired NDCG@k difference vs SASRec+ per row and slice: mean [95% interval], * where significant."""
    diffs = table_values(records, diff_metric(k))
    if not diffs:
        return [f"No paired differences: needs {BASELINE} in the records."]
    slices = [s for s in slices_of(records) if any(s in row for row in diffs.values())]
    lines = ["| model | " + " | ".join(slices) + " |", "|---|" + "---|" * len(slices)]
    for model, row in diffs.items():
        cells = [diff_cell(row.get(s)) for s in slices]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def round_label(row: str) -> str:
    """"round 0: the SFT adapter's tags", "round 1", ... for a row of self-training's rounds."""
    from llmrec.eval.rows import ROUND_ROWS

    n = ROUND_ROWS[row]
    return "round 0: the SFT adapter's tags" if n == 0 else f"round {n}"


def llm_gain_table(records: Sequence[dict], k: int = 10) -> list[str]:
    """Paired NDCG@k difference of each LLM row against the same model without its LLM stage (records marked
    comparison="llm_gain"), and of self-trained tags against their round-0 tags ("self_training_gain"): mean
    [95% interval], * where significant. Empty without such records."""
    gains = [r for r in records if r.get("comparison") in ("llm_gain", "self_training_gain")
             and r["metric"].startswith(f"ndcg@{k}_diff_vs_")]
    if not gains:
        return []
    slices = slices_of(gains)
    by_row: dict[tuple[str, str], dict[str, dict]] = {}
    for r in gains:
        reference = r["reference"] + (f" ({round_label(r['reference'])})"
                                      if r["comparison"] == "self_training_gain" else "")
        by_row.setdefault((r["model"], reference), {})[r["slice"]] = r
    lines = ["| LLM row | without the LLM stage | " + " | ".join(slices) + " |", "|---|---|" + "---|" * len(slices)]
    for (model, reference), row in by_row.items():
        cells = [diff_cell(row.get(s)) for s in slices]
        lines.append(f"| {model} | {reference} | " + " | ".join(cells) + " |")
    return lines


def share_table(records: Sequence[dict]) -> list[str]:
    """llm_share / fallback_share per row and slice, where the records carry them (rows over the limit marked)."""
    shares = {m: table_values(records, m) for m in ("llm_share", "fallback_share")}
    models = list(dict.fromkeys([*shares["llm_share"], *shares["fallback_share"]]))
    if not models:
        return []
    lines = ["| model | slice | llm_share | fallback_share | |", "|---|---|---|---|---|"]
    for model in models:
        slices = [s for s in slices_of(records) if s in shares["llm_share"].get(model, {})
                  or s in shares["fallback_share"].get(model, {})]
        for s in slices:
            llm, fb = (shares[m].get(model, {}).get(s) for m in ("llm_share", "fallback_share"))
            flag = f"fallback > {FALLBACK_LIMIT:.0%}" if fb and fb["value"] > FALLBACK_LIMIT else ""
            lines.append(f"| {model} | {s} | {llm['value']:.3f} |" if llm else f"| {model} | {s} | – |")
            lines[-1] += f" {fb['value']:.3f} | {flag} |" if fb else f" – | {flag} |"
    return lines


def chosen_fused_row(records: Sequence[dict], k: int = 10, slice_name: str | None = None) -> str | None:
    """The fused row with the best VALIDATION NDCG@k (None when no fused row has a validation record). Rows whose
    validation record is marked `optimistic` (tags mined as of the test time, which saw the validation target)
    are never chosen."""
    values = table_values(records, f"ndcg@{k}")
    have = [m for m in FUSED_ROWS if "valid" in values.get(m, {}) and not values[m]["valid"].get("optimistic")
            and (slice_name is None or slice_name in values[m])]
    return max(have, key=lambda m: values[m]["valid"]["value"]) if have else None


def strongest_baseline(records: Sequence[dict], k: int = 10) -> str | None:
    """The baseline row with the best VALIDATION NDCG@k (None when none has a validation record)."""
    values = table_values(records, f"ndcg@{k}")
    have = [m for m in BASELINE_CANDIDATES if "valid" in values.get(m, {})]
    return max(have, key=lambda m: values[m]["valid"]["value"]) if have else None


def target_lines(records: Sequence[dict], k: int = 10, reference: str = BASELINE) -> list[str]:
    """The product targets as ratios of NDCG@k: the fused row chosen on validation vs `reference`, per slice."""
    values, diffs = table_values(records, f"ndcg@{k}"), table_values(records, diff_metric(k, reference))
    base, best = values.get(reference), chosen_fused_row(records, k)
    if base is None or best is None:
        return [f"Targets not computed: needs {reference} and one of {', '.join(FUSED_ROWS)} with validation "
                "(`valid`) records."]
    label = "SASRec+" if reference == BASELINE else reference
    out, stand_ins = [], {}
    for s in [s for s in slices_of(records) if s == "all" or s.startswith(("short_", "cold_user_"))]:
        # A slice the judged row has no scores for (LLM tags exist only for warm users' full histories) is
        # judged on the best row on validation among those that have it: what would serve those users.
        row = best if s in values[best] else chosen_fused_row(records, k, s)
        if s not in base or row is None:
            continue
        if row != best:
            stand_ins.setdefault(row, []).append(s)
        b, f = base[s]["value"], values[row][s]["value"]
        goal = TARGET_ALL if s == "all" else TARGET_COLD
        d = diffs.get(row, {}).get(s)
        sig = ("significant" if d.get("significant") else "not significant") if d else "–"
        if b > 0:
            verdict = f"{f / b:.2f}x | >= {goal}x | {'met' if f / b >= goal else 'not met'} | {sig}"
        else:
            verdict = f"undefined ({label} scored 0) | >= {goal}x | not judged | {sig}"
        out.append(f"| {s} | {row} | {f:.4f} | {b:.4f} | {verdict} |")
    valid = values[best]["valid"]["value"]
    others = "".join(f" On {', '.join(sl)}, which {best} has no scores for: {row}, the best there on validation."
                     for row, sl in stand_ins.items())
    return [f"Fused row judged: {best}, chosen on validation NDCG@{k} ({valid:.4f}); test scores played no part "
            f"in the choice.{others}", "",
            f"| slice | fused row | NDCG@{k} | {label} NDCG@{k} | ratio | target | | paired diff |",
            "|---|---|---|---|---|---|---|---|", *out]
