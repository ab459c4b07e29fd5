"""The offline comparison as a reader sees it: a Markdown table (models x slices) and two PNG plots.

Everything is computed from the records `llmrec.eval.run` wrote and its settings; nothing is typed in by
hand. The targets compare the best fused three-tower row with SASRec+ (`sasrec_ce`) on NDCG@10: >= 1.05x on
all users and >= 1.3x on each cold slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

SLICE_ORDER = ("all", "cold_0", "cold_1", "cold_3", "cold_5", "long_tail")
FUSED_ROWS = ("three_tower_heuristic_tags", "three_tower_llm_tags", "three_tower_llm_lora_tags")
BASELINE = "sasrec_ce"
TARGET_ALL, TARGET_COLD = 1.05, 1.3


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


def render_table(records: Sequence[dict], metric: str) -> str:
    """A Markdown table: one row per model, one column per slice, "mean ± std"; "n=" marks a user sample."""
    values, slices = table_values(records, metric), slices_of(records)
    full_n = {s: max((r["n"] for r in records if r["slice"] == s), default=0) for s in slices}
    lines = ["| model | beta | " + " | ".join(slices) + " |", "|---|---|" + "---|" * len(slices)]
    for model, row in values.items():
        beta = next((r.get("beta") for r in row.values() if r.get("beta")), "")
        cells = []
        for s in slices:
            r = row.get(s)
            if r is None:
                cells.append("–")
                continue
            cell = f"{r['value']:.4f} ± {r['std']:.4f}"
            if r["n"] != full_n[s]:
                cell += f" (n={r['n']})"
            cells.append(cell)
        lines.append(f"| {model} | {beta} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(records: Sequence[dict], k: int = 10) -> list[str]:
    """The product targets as ratios of NDCG@k, best fused three-tower row vs SASRec+, per slice."""
    values = table_values(records, f"ndcg@{k}")
    base = values.get(BASELINE)
    fused = [m for m in FUSED_ROWS if m in values]
    if base is None or not fused:
        return [f"Targets not computed: needs {BASELINE} and one of {', '.join(FUSED_ROWS)} in the records."]
    out = []
    for s in [s for s in slices_of(records) if s == "all" or s.startswith("cold_")]:
        have = [m for m in fused if s in values[m]]
        if s not in base or not have:
            continue
        best = max(have, key=lambda m: values[m][s]["value"])
        b, f = base[s]["value"], values[best][s]["value"]
        goal = TARGET_ALL if s == "all" else TARGET_COLD
        if b > 0:
            verdict = f"{f / b:.2f}x | >= {goal}x | {'met' if f / b >= goal else 'not met'}"
        else:
            verdict = f"undefined (SASRec+ scored 0) | >= {goal}x | not judged"
        out.append(f"| {s} | {best} | {f:.4f} | {b:.4f} | {verdict} |")
    return ["| slice | fused row | NDCG@10 | SASRec+ NDCG@10 | ratio | target | |", "|---|---|---|---|---|---|---|",
            *out]


def plot_ndcg_by_slice(records: Sequence[dict], path: str | Path, k: int = 10) -> Path:
    """Grouped bars: NDCG@k per slice (x) for every model (bars), error bars = std over seeds."""
    values, slices = table_values(records, f"ndcg@{k}"), slices_of(records)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(slices)), 5))
    width = 0.8 / max(len(values), 1)
    colors = plt.get_cmap("tab20").colors
    for j, (model, row) in enumerate(values.items()):
        have = [i for i, s in enumerate(slices) if s in row]
        ax.bar([i + j * width for i in have], [row[slices[i]]["value"] for i in have], width,
               yerr=[row[slices[i]]["std"] for i in have], label=model, color=colors[j % len(colors)])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(slices))], slices)
    ax.set_ylabel(f"NDCG@{k} (test)")
    ax.set_title(f"NDCG@{k} per slice per model")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_ndcg_by_history(records: Sequence[dict], path: str | Path, k: int = 10) -> Path:
    """NDCG@k against the history length the model saw: cold_0/1/3/5 and the full history ("all")."""
    values = table_values(records, f"ndcg@{k}")
    cold = sorted((s for s in slices_of(records) if s.startswith("cold_")), key=lambda s: int(s.split("_")[1]))
    points = cold + ["all"]
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors
    for j, (model, row) in enumerate(values.items()):
        if sum(s in row for s in points) > 1:  # a missing point (NaN) breaks the line instead of bridging it
            nan = float("nan")
            ax.errorbar(range(len(points)), [row[s]["value"] if s in row else nan for s in points],
                        yerr=[row[s]["std"] if s in row else nan for s in points], marker="o", label=model,
                        capsize=2, color=colors[j % len(colors)])
    ax.set_xticks(range(len(points)), [s.replace("cold_", "") for s in cold] + ["all"])
    ax.set_xlabel("events of history shown to the model")
    ax.set_ylabel(f"NDCG@{k} (test)")
    ax.set_title(f"NDCG@{k} against history length")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        f"seeds: {', '.join(map(str, cfg.get('seeds', [])))}; run time: {settings.get('seconds', '?')} s.", "",
        *([] if settings.get("complete", True) else
          ["**Partial report: the run is still going (or was stopped); rows below are the finished ones.**", ""]),
        "Protocol: leave-one-out by time (last event = test, the one before = validation), full-catalogue "
        "ranking with pessimistic ties, the items of the history shown to the model excluded. Cold slices "
        "show only the last N events before the test item (models trained on the normal split). Long tail: "
        f"items outside the most popular ones holding {cfg.get('long_tail_mass', 0.8):.0%} of training "
        "interactions. Values are test results, mean ± sample std over seeds; beta and early stopping used "
        "the validation targets only.", "",
        f"## NDCG@{k}", "", render_table(records, f"ndcg@{k}"), "",
        f"## HR@{k}", "", render_table(records, f"hr@{k}"), "",
        "## Targets (fused three-tower vs SASRec+, NDCG@10)", "", *target_lines(records, k), "",
        f"## All users: MRR, coverage@{k}, long-tail share@{k}", "",
        "| model | mrr | coverage | long-tail share |", "|---|---|---|---|",
    ]
    mrr, cov, tail = (table_values(records, m) for m in ("mrr", f"coverage@{k}", f"long_tail_share@{k}"))
    for model in mrr:
        cells = [t.get(model, {}).get("all") for t in (mrr, cov, tail)]
        lines.append(f"| {model} | " + " | ".join(f"{c['value']:.4f} ± {c['std']:.4f}" if c else "–" for c in cells)
                     + " |")
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
        cs = notes.get("coldstart")
        if cs:
            lines.append(f"- coldstart_*: user tower alone (beta = 1) on {cs['n_users']} sampled users per cold "
                         "slice; imagined histories generated once per slice and reused for every seed. "
                         "Per slice: " + "; ".join(
                             f"{s}: {v.get('n_matched', 0)}/{v.get('n_imagined', 0)} imagined items matched, "
                             f"{v.get('fallback', 0)} fallbacks, {v.get('seconds', 0):.0f} s"
                             for s, v in cs.items() if isinstance(v, dict)) + ".")
        for m in ("three_tower_llm_tags", "three_tower_llm_lora_tags"):
            if m in notes:
                lines.append(f"- {m}: {notes[m]['slices']}; tags table {notes[m]['tags'].get('path')}.")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(records: Sequence[dict], settings: dict, md_path: str | Path) -> list[Path]:
    """Write the Markdown report and its two plots next to it; returns the paths written."""
    md_path = Path(md_path)
    k = settings.get("evaluate_config", {}).get("k", 10)
    plots = [plot_ndcg_by_slice(records, md_path.with_name(f"{md_path.stem}_ndcg_by_slice.png"), k),
             plot_ndcg_by_history(records, md_path.with_name(f"{md_path.stem}_ndcg_by_history.png"), k)]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(render_markdown(records, settings, plots))
    tmp.replace(md_path)
    return [md_path, *plots]
