from __future__ import annotations

import hashlib
import json

import pytest
from langchain_core.prompts import ChatPromptTemplate

from llmrec.llm.prompts import (
    PROMPTS_ENV,
    PromptError,
    chat_prompt,
    load_prompt,
    prompt_hash,
    prompt_path,
    prompts_dir,
    render_prompt,
)
from llmrec.nouns import prompt_nouns

TASKS = {
    "interests": dict(lines=["NARR", "second"], min_interests=5, max_interests=8, max_evidence=3,
                      tags_per_interest=4, **prompt_nouns()),
    "rank": dict(narrative="NARR", interests=["space opera"], candidate="Toy Story (1995)", **prompt_nouns()),
}
# Every prompt file, with variables that take each branch of its template (see test_every_prompt_is_covered).
EVERY = {
    **TASKS,
    "explain": dict(interest="space horror", title="Alien", year=1979, genres="Horror, Sci-Fi", item="movie",
                    user="viewer", brand="Fox", about="A crew meets a creature.", liked="Aliens (1986)",
                    shared="horror, sci-fi"),
    "imagine_history": dict(profile="age 24, occupation technician", history=["Toy Story (1995)", "Heat (1995)"],
                            examples=[{"profile": "age 25", "titles": ["Fargo (1996)", "Babe (1995)"]},
                                      {"profile": "age 30", "titles": ["Alien (1979)"]}],
                            k=5, max_genres=3, sample='{"t":"Fargo","g":["Crime"],"y":1996}', **prompt_nouns()),
    "rank_listwise": dict(narrative="NARR", candidates=[{"letter": "A", "text": "Alien (1979; Horror)"},
                                                        {"letter": "B", "text": "Heat (1995; Crime)"}],
                          item="movie", user="viewer"),
}
VARIANTS = [  # second variable sets: the other side of each {% if %}
    ("interests", dict(EVERY["interests"], max_interests=5)),
    ("interests", dict(EVERY["interests"], max_evidence=0)),
    ("rank", dict(EVERY["rank"], interests=[])),
    ("explain", dict(EVERY["explain"], year=None, brand="", about="", liked="", interest="")),
    ("imagine_history", dict(EVERY["imagine_history"], history=[], examples=[])),
]


def reference_render(name: str, **variables) -> list[dict[str, str]]:
    """The renderer the LoRA adapter's training data came from: each block rendered by jinja2 and stripped."""
    template = load_prompt(name)

    def block(role, values):
        return "".join(template.blocks[role](template.new_context(values))).strip()

    messages = [{"role": "system", "content": block("system", variables)}]
    if "examples" in template.blocks:
        for line in filter(None, (ln.strip() for ln in block("examples", variables).splitlines())):
            shot = json.loads(line)
            messages += [{"role": "user", "content": block("user", {**variables, **shot["vars"]})},
                         {"role": "assistant", "content": json.dumps(shot["answer"], separators=(",", ":"))}]
    return messages + [{"role": "user", "content": block("user", variables)}]


def test_every_prompt_is_covered():
    assert sorted(p.stem for p in prompts_dir().glob("*.jinja")) == sorted(EVERY)


@pytest.mark.parametrize("name,variables", sorted(EVERY.items()) + VARIANTS)
def test_chat_template_renders_byte_identical_to_the_block_renderer(name, variables):
    got = render_prompt(name, **variables)
    assert got == reference_render(name, **variables)
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    via_langchain = [{"role": roles[m.type], "content": m.content} for m in chat_prompt(name).format_messages(**variables)]
    assert via_langchain == got  # langchain-core's own rendering of the template gives the same bytes
    assert json.dumps(got).encode() == json.dumps(reference_render(name, **variables)).encode()


def test_chat_prompt_is_a_jinja2_langchain_template_with_few_shot_pairs():
    prompt = chat_prompt("explain")
    assert isinstance(prompt, ChatPromptTemplate) and prompt is chat_prompt("explain")  # built once per file
    assert set(prompt.input_variables) == {"interest", "title", "year", "genres", "item", "user", "brand", "about",
                                           "liked", "shared"}
    assert all(m.prompt.template_format == "jinja2" for m in prompt.messages if hasattr(m, "prompt"))
    types = [m.type for m in prompt.format_messages(**EVERY["explain"])]
    assert types == ["system", "human", "ai", "human", "ai", "human"]


def test_chat_prompt_is_rebuilt_when_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    (tmp_path / "p.jinja").write_text("{% block system %}s{% endblock %}{% block user %}u {{ x }}{% endblock %}")
    assert render_prompt("p", x=1)[1]["content"] == "u 1"
    (tmp_path / "p.jinja").write_text("{% block system %}s{% endblock %}{% block user %}v {{ x }}{% endblock %}")
    assert render_prompt("p", x=1)[1]["content"] == "v 1"


def test_missing_attribute_is_an_error_not_an_empty_string():
    variables = dict(EVERY["imagine_history"], examples=[{"titles": ["Fargo (1996)"]}])  # no "profile"
    with pytest.raises(PromptError, match="profile"):
        render_prompt("imagine_history", **variables)


def test_examples_block_with_variables_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    (tmp_path / "p.jinja").write_text("{% block system %}s{% endblock %}{% block examples %}{{ x }}{% endblock %}"
                                      "{% block user %}u{% endblock %}")
    with pytest.raises(PromptError, match="examples block"):
        render_prompt("p", x=1)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_renders_a_system_and_user_message(name):
    messages = render_prompt(name, **TASKS[name])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "NARR" in messages[1]["content"] and all(m["content"] for m in messages)


def test_interests_prompt_numbers_lines_and_forbids_titles():
    system, user = (m["content"] for m in render_prompt("interests", **TASKS["interests"]))
    assert user == "History:\n1. NARR\n2. second" and "title" in system and "5 to 8" in system
    exact = render_prompt("interests", **{**TASKS["interests"], "max_interests": 5})[0]["content"]
    assert "exactly 5" in exact
    # Answer format 5 cites no lines, so they are not numbered (~2 prompt tokens a line saved).
    system, user = (m["content"] for m in render_prompt("interests", **{**TASKS["interests"], "max_evidence": 0}))
    assert user == "History:\nNARR\nsecond" and "numbered" not in system and "lines" not in system


def test_missing_variable_is_an_error_naming_it():
    with pytest.raises(PromptError, match="candidate"):
        render_prompt("rank", narrative="N", interests=[], **prompt_nouns())


def test_unknown_prompt_lists_known_ones():
    with pytest.raises(PromptError, match="interests"):
        prompt_path("no-such-prompt")


def test_hash_is_sha256_of_file_and_changes_with_it(tmp_path, monkeypatch):
    assert prompt_hash("rank") == hashlib.sha256(prompt_path("rank").read_bytes()).hexdigest()
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    (tmp_path / "p.jinja").write_text("{% block system %}s{% endblock %}{% block user %}u {{ x }}{% endblock %}")
    h1 = prompt_hash("p")
    assert render_prompt("p", x=1)[1]["content"] == "u 1"
    (tmp_path / "p.jinja").write_text("{% block system %}s2{% endblock %}{% block user %}u{% endblock %}")
    assert prompt_hash("p") != h1


def test_prompt_without_blocks_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    (tmp_path / "bad.jinja").write_text("just text {{ x }}")
    with pytest.raises(PromptError, match="missing block"):
        render_prompt("bad", x=1)


def test_examples_block_becomes_few_shot_turns(tmp_path, monkeypatch):
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    (tmp_path / "p.jinja").write_text(
        "{% block system %}s{% endblock %}"
        '{% block examples %}{"vars": {"x": 7}, "answer": {"e": "seven"}}\n{"vars": {"x": 8}, "answer": {"e": "eight"}}'
        "{% endblock %}{% block user %}u {{ x }} {{ y }}{% endblock %}")
    messages = render_prompt("p", x=1, y="Y")
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "s"), ("user", "u 7 Y"), ("assistant", '{"e":"seven"}'), ("user", "u 8 Y"),
        ("assistant", '{"e":"eight"}'), ("user", "u 1 Y")]
    (tmp_path / "p.jinja").write_text("{% block system %}s{% endblock %}{% block examples %}"
                                      '{"vars": {"x": 7}}{% endblock %}{% block user %}u{% endblock %}')
    with pytest.raises(PromptError, match="examples line 1"):
        render_prompt("p", x=1)


def test_explain_prompt_shows_worked_examples_not_a_placeholder():
    messages = render_prompt("explain", item="movie", user="viewer", interest="space horror", title="Alien",
                             year=1979, genres="Horror, Sci-Fi", brand="", about="", liked="", shared="horror, sci-fi")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Alien (1979)" in messages[-1]["content"] and '"sentence"' not in messages[-1]["content"]
