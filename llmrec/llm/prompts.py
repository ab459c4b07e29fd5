"""Prompt templates as versioned files in prompts/, loaded by name and hashed into manifests.

Each `prompts/NAME.jinja` is a Jinja2 template with two blocks, `system` and `user`; rendering gives an
OpenAI-style chat (`llmrec.llm.Messages`). An optional `examples` block holds few-shot turns, one JSON
object per line, `{"vars": {...}, "answer": {...}}`: each becomes a user turn (the `user` block rendered
with those variables) and an assistant turn (the answer as compact JSON), between the system message and
the real question; small models copy a bare format placeholder but follow worked examples. Variables are
strict: a missing one is an error naming it, so a renamed variable can never silently render as an empty
string. The file's sha256 (`prompt_hash`) goes into every artifact manifest, so a changed prompt is a visible
change of the artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from llmrec.errors import PromptError
from llmrec.llm.base import Messages

PROMPTS_ENV = "LLMREC_PROMPTS_DIR"
SUFFIX = ".jinja"


def prompts_dir() -> Path:
    """$LLMREC_PROMPTS_DIR, else the repository's prompts/ folder."""
    env = os.environ.get(PROMPTS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "prompts"


def prompt_path(name: str) -> Path:
    path = prompts_dir() / f"{name}{SUFFIX}"
    if not path.is_file():
        known = sorted(p.stem for p in prompts_dir().glob(f"*{SUFFIX}"))
        raise PromptError(f"no prompt {name!r} at {path}; known prompts: {known}")
    return path


@lru_cache(maxsize=None)
def _environment(folder: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def load_prompt(name: str) -> jinja2.Template:
    """The template `prompts/NAME.jinja`; it must define the `system` and `user` blocks."""
    path = prompt_path(name)
    try:
        template = _environment(str(path.parent)).get_template(path.name)
    except jinja2.TemplateError as e:
        raise PromptError(f"{path}: {e}") from e
    missing = {"system", "user"} - set(template.blocks)
    if missing:
        raise PromptError(f"{path}: missing block(s) {sorted(missing)}; a prompt needs 'system' and 'user'")
    return template


def render_prompt(name: str, **variables: Any) -> Messages:
    """The chat messages of prompt NAME filled with `variables` (system, few-shot turns, user)."""
    template = load_prompt(name)

    def block(role: str, values: dict[str, Any]) -> str:
        return "".join(template.blocks[role](template.new_context(values))).strip()

    try:
        messages = [{"role": "system", "content": block("system", variables)}]
        shots = _examples(name, block("examples", variables)) if "examples" in template.blocks else []
        for shot in shots:
            messages += [{"role": "user", "content": block("user", {**variables, **shot["vars"]})},
                         {"role": "assistant", "content": json.dumps(shot["answer"], separators=(",", ":"))}]
        return messages + [{"role": "user", "content": block("user", variables)}]
    except jinja2.UndefinedError as e:
        raise PromptError(f"prompt {name!r} ({prompt_path(name)}): {e}") from e


def _examples(name: str, text: str) -> list[dict[str, Any]]:
    """The `examples` block's lines as {"vars": dict, "answer": dict}; a bad line is an error naming it."""
    shots = []
    for n, line in enumerate(filter(None, (ln.strip() for ln in text.splitlines())), 1):
        try:
            shot = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptError(f"{prompt_path(name)}: examples line {n} is not JSON: {e}") from e
        if not (isinstance(shot, dict) and isinstance(shot.get("vars"), dict) and isinstance(shot.get("answer"), dict)):
            raise PromptError(f'{prompt_path(name)}: examples line {n} needs {{"vars": {{...}}, "answer": {{...}}}}')
        shots.append(shot)
    return shots


def prompt_hash(name: str) -> str:
    """sha256 of the prompt file's bytes, for manifests."""
    return hashlib.sha256(prompt_path(name).read_bytes()).hexdigest()


def prompt_hashes(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    return {n: prompt_hash(n) for n in names}
