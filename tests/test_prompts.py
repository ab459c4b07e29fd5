from __future__ import annotations

import hashlib

import pytest

from llmrec.llm.prompts import PROMPTS_ENV, PromptError, prompt_hash, prompt_path, render_prompt
from llmrec.nouns import prompt_nouns

TASKS = {
    "interests": dict(lines=["NARR", "second"], min_interests=5, max_interests=8, max_evidence=3,
                      tags_per_interest=4, **prompt_nouns()),
    "rank": dict(narrative="NARR", interests=["space opera"], candidate="Toy Story (1995)", **prompt_nouns()),
}


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
    messages = render_prompt("explain", interest="space horror", title="Alien", year=1979, genres="Horror, Sci-Fi",
                             max_words=20)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Alien (1979)" in messages[-1]["content"] and '"sentence"' not in messages[-1]["content"]
