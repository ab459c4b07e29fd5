"""Prompt templates as versioned files in prompts/, loaded by name and hashed into manifests.

Each `prompts/NAME.jinja` is a Jinja2 template with two blocks, `system` and `user`; rendering gives an
OpenAI-style chat (`llmrec.llm.Messages`). Variables are strict: a missing one is an error naming it, so a
renamed variable can never silently render as an empty string. The file's sha256 (`prompt_hash`) goes
into every artifact manifest, so a changed prompt is a visible change of the artifact.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from llmrec.llm import Messages

PROMPTS_ENV = "LLMREC_PROMPTS_DIR"
SUFFIX = ".jinja"


class PromptError(ValueError):
    """A prompt file is missing, malformed, or rendered with a missing variable."""


def prompts_dir() -> Path:
    """$LLMREC_PROMPTS_DIR, else the repository's prompts/ folder."""
    env = os.environ.get(PROMPTS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "prompts"


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
    """The chat messages of prompt NAME filled with `variables`."""
    template = load_prompt(name)
    context = template.new_context(variables)
    try:
        return [
            {"role": role, "content": "".join(template.blocks[role](context)).strip()}
            for role in ("system", "user")
        ]
    except jinja2.UndefinedError as e:
        raise PromptError(f"prompt {name!r} ({prompt_path(name)}): {e}") from e


def prompt_hash(name: str) -> str:
    """sha256 of the prompt file's bytes, for manifests."""
    return hashlib.sha256(prompt_path(name).read_bytes()).hexdigest()


def prompt_hashes(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    return {n: prompt_hash(n) for n in names}
