"""`llmrec evaluate`: the offline comparison -> records JSON, settings JSON, Markdown report and PNG plots.

Writes OUT (records, benchmark "offline_eval"), OUT with `.settings.json` (the frozen EvaluateConfig with
every model config, split hash, git commit, command), and OUT with `.md` plus two PNG plots beside it
(OUT-ndcg-by-slice.png, OUT-ndcg-by-history.png); `--results-dir DIR` sets OUT = DIR/<dataset name>.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

from llmrec.config import EvaluateConfig, SASRecConfig, TowerConfig


def quick_config(**overrides) -> EvaluateConfig:
    """The small version for tests and smoke runs: 1 seed, few epochs, 100 users, tiny LLM samples."""
    base = dict(
        seeds=(0,), max_users=100, rerank_users=4, coldstart_users=4,
        sasrec=SASRecConfig(maxlen=50, epochs=2, eval_every=1, patience=1),
        towers=TowerConfig(encoder="hashed-bow", epochs=2, patience=1, max_len=20, beta_grid=(0.0, 0.5, 1.0)),
    )
    return EvaluateConfig(**{**base, **overrides})


def git_commit(repo: Path) -> dict:
    """The commit the code ran at, and whether the working tree had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated integers, got {text!r}") from None


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        dataset: str = typer.Option(None, help="Built-in name or a dataset folder; default --config's, else "
                                              "ml-100k."),
        out: Path = typer.Option(None, help="Records JSON; default reports/<dataset>.json. The settings JSON, "
                                            "the Markdown report and the plots go beside it."),
        results_dir: Path = typer.Option(None, help="Write NAME.json, NAME.settings.json, NAME.md and NAME-*.png "
                                                    "here (NAME = the dataset's name), e.g. docs/results; "
                                                    "excludes --out."),
        cold_user_share: float = typer.Option(None, min=0.0, max=0.99, help="Share of users held out of every "
                                              "model's training (cold_user_N slices); default 0.15, 0 = off."),
        quick: bool = typer.Option(False, "--quick", help="Small version (1 seed, 2 epochs, 100 users, "
                                                          "hashed-bow text features): minutes, for tests."),
        seeds: str = typer.Option(None, help="Comma-separated seeds, each retraining every model; default 0,1,2 "
                                             "(--quick: 0)."),
        ablation_seeds: str = typer.Option(None, help="Seeds of the ablation rows, a subset of --seeds (default all)."),
        models: str = typer.Option(None, help="Comma-separated rows to run (default all); see EvaluateConfig."),
        llm_tags: Path = typer.Option(None, help="Mined-tags Parquet (or folder) of `llmrec mine-interests`; "
                                                 "enables three_tower_llm_tags."),
        llm_lora_tags: Path = typer.Option(None, help="The same, mined with the LoRA adapter; enables "
                                                      "three_tower_llm_lora_tags."),
        llm_tags_valid: Path = typer.Option(None, help="--llm-tags mined as of the validation time "
                                                       "(`mine-interests --as-of valid`): the row trains and is "
                                                       "validated on it, so its validation is not optimistic."),
        llm_lora_tags_valid: Path = typer.Option(None, help="The same for --llm-lora-tags."),
        llm_self_tags: Path = typer.Option(None, help="The same, mined with a self-trained adapter (`llmrec "
                                                      "finetune --task tags-self-train`, one round's folder); "
                                                      "enables three_tower_llm_self_tags."),
        llm_self_tags_valid: Path = typer.Option(None, help="The same for --llm-self-tags."),
        llm_self2_tags: Path = typer.Option(None, help="The same, mined with round 2's adapter; enables "
                                                       "three_tower_llm_self2_tags."),
        llm_self2_tags_valid: Path = typer.Option(None, help="The same for --llm-self2-tags."),
        no_llm: bool = typer.Option(False, "--no-llm", help="Skip the rows that call the LLM (re-ranking, "
                                                            "cold start)."),
        rerank_users: int = typer.Option(None, min=1, help="Users re-ranked by the LLM (seeded sample); "
                                                           "default 50 (--quick: 4)."),
        coldstart_users: int = typer.Option(None, min=1, help="Users whose cold histories the LLM augments, per "
                                                              "cold slice; default 100 (--quick: 4)."),
        max_users: int = typer.Option(None, min=1, help="Evaluate a seeded sample of test users; default all "
                                                        "(--quick: 100)."),
        backend: str = typer.Option(None, help="LLM backend for the LLM rows: vllm or transformers; default "
                                              "--config's, else vllm."),
        coldstart_cache: Path = typer.Option(None, help="JSON cache of imagined histories (reused across runs)."),
        tune_towers: bool = typer.Option(None, "--tune-towers/--no-tune-towers", help="Choose the tower settings "
                                         "on validation first (EvaluateConfig.tower_grid: lr x dropout)."),
        ranker_adapter: Path = typer.Option(None, help="LoRA adapter of `llmrec finetune --task ranker` for the "
                                                       "*_llm_ranker rows (default: the base model ranks)."),
        resume: bool = typer.Option(False, "--resume", help="Take over the finished (row, seed) pairs of the "
                                                            "settings JSON beside --out (same split, same row "
                                                            "config); train and score only the rest."),
        config_file: Path = typer.Option(None, "--config", help="An EvaluateConfig JSON (e.g. a previous run's "
                                                                "settings' evaluate_config) to start from; the "
                                                                "other options override its fields."),
    ) -> None:
        """Train and score every model on one split (3 seeds); write records, settings, Markdown and plots."""
        from llmrec.data import resolve_dataset
        from llmrec.eval.run import run_evaluation

        if backend not in (None, "vllm", "transformers"):
            raise typer.BadParameter(f"--backend must be vllm or transformers, got {backend!r}")
        if config_file is not None and quick:
            raise typer.BadParameter("--config and --quick exclude each other")
        # Only the options given override the file: an unset option keeps the file's value.
        start = json.loads(config_file.read_text()) if config_file is not None else {}
        start = start.get("evaluate_config", start)
        over = given_overrides(start, dataset=dataset, no_llm=no_llm, backend=backend, llm_tags=llm_tags,
                               llm_lora_tags=llm_lora_tags, llm_tags_valid=llm_tags_valid,
                               llm_lora_tags_valid=llm_lora_tags_valid, llm_self_tags=llm_self_tags,
                               llm_self_tags_valid=llm_self_tags_valid, llm_self2_tags=llm_self2_tags,
                               llm_self2_tags_valid=llm_self2_tags_valid, coldstart_cache=coldstart_cache,
                               ranker_adapter=ranker_adapter, rerank_users=rerank_users,
                               coldstart_users=coldstart_users, max_users=max_users, cold_user_share=cold_user_share,
                               seeds=seeds, ablation_seeds=ablation_seeds, models=models, tune_towers=tune_towers)
        config = quick_config(**over) if quick else EvaluateConfig.model_validate({**start, **over})
        dataset = config.dataset
        if results_dir is not None and out is not None:
            raise typer.BadParameter("--results-dir and --out exclude each other")
        out = out or (results_dir or Path("reports")) / f"{Path(dataset).name}.json"
        extra = {"command": " ".join(["llmrec", *sys.argv[1:]]),
                 "git_commit": git_commit(Path(__file__).resolve().parents[2])}
        earlier = None
        if resume:
            settings_path = out.with_suffix(".settings.json")
            if not settings_path.is_file():
                raise typer.BadParameter(f"--resume: no earlier run at {settings_path}")
            earlier = json.loads(settings_path.read_text())
        run = run_evaluation(resolve_dataset(dataset), config,
                             checkpoint=lambda partial: write_outputs(partial, out, extra), resume=earlier)
        paths = write_outputs(run, out, extra)
        print(json.dumps({"records": str(out), "settings": str(paths[0]), "report": [str(p) for p in paths[1:]],
                          "n_records": len(run.records), "seconds": run.settings["seconds"],
                          "absent": run.settings["absent"]}))


def given_overrides(start: dict, *, dataset, no_llm, backend, llm_tags, llm_lora_tags, coldstart_cache, ranker_adapter,
                    rerank_users, coldstart_users, max_users, cold_user_share, seeds, ablation_seeds, models,
                    tune_towers=None, llm_tags_valid=None, llm_lora_tags_valid=None, llm_self_tags=None,
                    llm_self_tags_valid=None, llm_self2_tags=None, llm_self2_tags_valid=None) -> dict:
    """EvaluateConfig fields from the options that were given (an unset option keeps the --config file's value)."""
    over: dict = {"dataset": dataset, "use_llm": False if no_llm else None, "tune_towers": tune_towers}
    if backend is not None:
        over["llm"] = {**start.get("llm", {}), "backend": backend}
    for key, value in (("llm_tags", llm_tags), ("llm_lora_tags", llm_lora_tags), ("llm_tags_valid", llm_tags_valid),
                       ("llm_lora_tags_valid", llm_lora_tags_valid), ("llm_self_tags", llm_self_tags),
                       ("llm_self_tags_valid", llm_self_tags_valid), ("llm_self2_tags", llm_self2_tags),
                       ("llm_self2_tags_valid", llm_self2_tags_valid),
                       ("coldstart_cache", coldstart_cache), ("ranker_adapter", ranker_adapter)):
        if value is not None:
            if key != "coldstart_cache" and not value.exists():
                raise typer.BadParameter(f"--{key.replace('_', '-')} {value}: no such file or folder")
            over[key] = str(value)
    for key, value in (("rerank_users", rerank_users), ("coldstart_users", coldstart_users),
                       ("max_users", max_users), ("cold_user_share", cold_user_share)):
        if value is not None:
            over[key] = value
    if seeds is not None:
        over["seeds"] = parse_ints(seeds, "--seeds")
    if ablation_seeds is not None:
        over["ablation_seeds"] = parse_ints(ablation_seeds, "--ablation-seeds")
    if models is not None:
        over["models"] = tuple(m.strip() for m in models.split(",") if m.strip())
    over = {k: v for k, v in over.items() if v is not None}
    return over


def write_outputs(run, out: Path, extra: dict) -> list[Path]:
    """Records JSON, settings JSON, Markdown and plots for a (possibly partial) run; returns the other paths."""
    from llmrec.bench import write_records
    from llmrec.eval.report import write_report

    settings = {**run.settings, **extra}
    write_records(run.records, "offline_eval", out)
    settings_path = out.with_suffix(".settings.json")
    tmp = settings_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(settings_path)
    return [settings_path, *write_report(run.records, settings, out.with_suffix(".md"))]
