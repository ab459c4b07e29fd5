"""Prompt templates as versioned files in prompts/, loaded by name and hashed into manifests.

Each `prompts/NAME.jinja` is a Jinja2 template with two blocks, `system` and `user`; `chat_prompt` turns it
into a langchain-core `ChatPromptTemplate`, and `render_prompt` renders that to an OpenAI-style chat
(`llmrec.llm.Messages`), byte-identical to rendering the blocks directly (the LoRA adapter was trained on
the exact text). An optional `examples` block holds few-shot turns, one JSON
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
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.prompts import (
    AIMessagePromptTemplate,
    ChatPromptTemplate,
    HumanMessagePromptTemplate,
    SystemMessagePromptTemplate,
)

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


def chat_prompt(name: str) -> ChatPromptTemplate:
    """prompts/NAME.jinja as a langchain-core `ChatPromptTemplate` (jinja2 format): system, few-shot pairs, user.

    Each block becomes one message template wrapped in `{% filter trim %}` (the old renderer stripped each
    block); a few-shot user turn is the `user` block inside `{% with var=example_K["var"] %}`, its example
    variables bound as the partial `example_K`, and its answer a literal AI message (compact JSON). Rebuilt
    only when the file's bytes change.
    """
    path = prompt_path(name)
    data = path.read_bytes()
    return _chat_prompt(name, str(path), hashlib.sha256(data).hexdigest(), data.decode())


@lru_cache(maxsize=64)
def _chat_prompt(name: str, path: str, digest: str, source: str) -> ChatPromptTemplate:
    template = load_prompt(name)  # syntax and the system/user blocks checked here
    blocks = {m.group(1): m.group(2) for m in _BLOCK.finditer(source)}
    missing = {"system", "user"} - set(blocks)
    if missing:  # jinja saw the block but the simple block syntax did not (e.g. a nested block)
        raise PromptError(f"{path}: block(s) {sorted(missing)} not written as {{% block NAME %}}...{{% endblock %}}")
    shots = []
    if "examples" in template.blocks:
        try:
            shots = _examples(name, "".join(template.blocks["examples"](template.new_context({}))).strip())
        except jinja2.UndefinedError as e:
            raise PromptError(f"{path}: the examples block must not use variables: {e}") from e
    messages: list[Any] = [("system", _trimmed(blocks["system"]))]
    partials = {}
    for k, shot in enumerate(shots):
        bound = ", ".join(f"{var}=example_{k}[{json.dumps(var)}]" for var in shot["vars"])
        messages.append(("human", _trimmed(f"{{% with {bound} %}}{blocks['user']}{{% endwith %}}")))
        messages.append(AIMessage(content=json.dumps(shot["answer"], separators=(",", ":"))))
        partials[f"example_{k}"] = shot["vars"]
    messages.append(("human", _trimmed(blocks["user"])))
    try:
        prompt = ChatPromptTemplate.from_messages(messages, template_format="jinja2")
    except jinja2.TemplateError as e:
        raise PromptError(f"{path}: {e}") from e
    return prompt.partial(**partials) if partials else prompt


_BLOCK = re.compile(r"\{%-?\s*block\s+(\w+)\s*-?%\}(.*?)\{%-?\s*endblock(?:\s+\w+)?\s*-?%\}", re.S)
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def _trimmed(body: str) -> str:
    return "{% filter trim %}" + body + "{% endfilter %}"


def render_prompt(name: str, **variables: Any) -> Messages:
    """The chat messages of prompt NAME filled with `variables` (system, few-shot turns, user).

    Renders `chat_prompt(name)`'s message templates with the same sandboxed jinja2 as langchain-core, but
    compiled once (langchain compiles on every call: 25x slower, which counts at one prompt per user) and
    with StrictUndefined, so a missing variable or attribute is an error naming it.
    """
    prompt = chat_prompt(name)
    missing = sorted(set(prompt.input_variables) - set(variables))
    if missing:
        raise PromptError(f"prompt {name!r} ({prompt_path(name)}): variable(s) {missing} not given")
    values = {**prompt.partial_variables, **variables}
    out = []
    try:
        for m in prompt.messages:
            if isinstance(m, BaseMessage):  # a few-shot answer: literal text
                out.append({"role": _ROLES[m.type], "content": m.content})
            else:
                out.append({"role": _TEMPLATE_ROLES[type(m)], "content": _compiled(m.prompt.template).render(values)})
    except jinja2.TemplateError as e:
        raise PromptError(f"prompt {name!r} ({prompt_path(name)}): {e}") from e
    return out


_TEMPLATE_ROLES = {SystemMessagePromptTemplate: "system", HumanMessagePromptTemplate: "user",
                   AIMessagePromptTemplate: "assistant"}


@lru_cache(maxsize=256)
def _compiled(source: str) -> jinja2.Template:
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined).from_string(source)


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
