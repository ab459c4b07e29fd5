"""LLM backends: config checks, the fake, transformers on the real packaged model, and (slow) the real vLLM
engine and server, tested against greedy transformers decoding (STYLE 18)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from llmrec.config import LLMConfig
from llmrec.llm import (
    AdapterError, FakeBackend, LLMBackend, TransformersBackend, adapter_id, choice_token_ids, encode_prompts,
    make_backend, read_adapter_rank,
)  # fmt: skip
from llmrec.llm.model import ModelError, load_tokenizer

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You recommend movies."}, {"role": "user", "content": "I liked Star Wars and "
                                                              "Alien. Name one more film I may like."}],
    [{"role": "user", "content": "Count from one to ten in words."}],
]
CHOICES = ["A", "B", "C", "D"]
RANK_PROMPT = [[{"role": "user", "content": "Which is a fruit? A: car B: apple C: chair D: road. "
                                            "Answer with the letter only."}]]


class Pick(BaseModel):  # a compact, short-keyed answer like the stages ask for
    t: str
    n: int


# --- Config and helpers (fast) ---------------------------------------------------------------------


def test_llm_config_validates_with_clear_messages(tmp_path: Path):
    with pytest.raises(ValidationError, match="max_lora_rank must be one of"):
        LLMConfig(max_lora_rank=12)
    with pytest.raises(ValidationError, match="needs server_url"):
        LLMConfig(backend="server")
    with pytest.raises(ValidationError, match="must start with http"):
        LLMConfig(backend="server", server_url="localhost:8000")
    with pytest.raises(ValidationError, match="backend"):
        LLMConfig(backend="llama.cpp")
    with pytest.raises(ValidationError, match="max_loras"):
        LLMConfig(max_loras=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        LLMConfig(temprature=0.5)
    config = LLMConfig(backend="server", server_url="http://127.0.0.1:1", max_lora_rank=8, seed=3)
    assert LLMConfig.from_json(config.to_json(tmp_path / "llm.json")) == config


def test_fake_backend_is_deterministic_and_schema_valid():
    fake = FakeBackend()
    assert isinstance(fake, LLMBackend)
    out = fake.generate(PROMPTS, json_schema=Pick.model_json_schema())
    assert len(out) == len(PROMPTS) and all(Pick.model_validate_json(g.text) for g in out)
    assert fake.score_choices(PROMPTS, CHOICES) == FakeBackend().score_choices(PROMPTS, CHOICES)
    assert fake.calls == [{"n": 3, "json_schema": True, "adapter": None, "frequency_penalty": 0.0}]


def test_adapter_helpers(tmp_path: Path):
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        read_adapter_rank(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    assert read_adapter_rank(tmp_path) == 8
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match="rank"):
        read_adapter_rank(tmp_path)
    # Stable across processes (builtin hash() is salted per process), positive, within int32.
    code = f"from llmrec.llm import adapter_id; print(adapter_id({str(tmp_path)!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(other) == adapter_id(tmp_path) and 0 < adapter_id(tmp_path) < 2**31
    assert adapter_id(tmp_path / "x") != adapter_id(tmp_path)


def test_prompt_and_choice_encoding(model_dir: Path):
    tok = load_tokenizer(model_dir)
    ids = encode_prompts(tok, PROMPTS[:1], max_model_len=256, max_tokens=16)
    assert tok.decode(ids[0]).rstrip().endswith("<|im_start|>assistant")
    with pytest.raises(ValueError, match="prompt 0 has .* exceeds max_model_len=40"):
        encode_prompts(tok, PROMPTS[:1], max_model_len=40, max_tokens=16)
    assert len(set(choice_token_ids(tok, CHOICES))) == 4
    with pytest.raises(ValueError, match="single-token"):
        choice_token_ids(tok, ["A", "unbelievably"])


def test_vllm_lora_requests_are_checked_before_the_engine_sees_them(tmp_path: Path):
    from llmrec.llm import VLLMBackend

    backend = VLLMBackend.__new__(VLLMBackend)  # no engine: only the adapter checks run
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 32}))
    backend.config = LLMConfig(enable_lora=False)
    with pytest.raises(AdapterError, match="enable_lora=False"):
        backend._lora(str(tmp_path))
    backend.config = LLMConfig(max_lora_rank=16)
    with pytest.raises(AdapterError, match="r=32 > max_lora_rank=16"):
        backend._lora(str(tmp_path))
    backend.config = LLMConfig(max_lora_rank=32)
    request = backend._lora(str(tmp_path))
    assert (request.lora_name, request.lora_int_id, request.lora_path) == (
        tmp_path.name, adapter_id(tmp_path), str(tmp_path.resolve()))
    assert backend._lora(None) is None


GiB = 2**30


class _Node0LLM:
    """Stands in for `vllm.LLM` with the CPU worker's memory checks on a host whose NUMA node 0 is smaller
    than the machine (11.21 GiB of 24, 8.61 free, as on a CI machine of ours)."""

    node_total, node_free, worker_rss = 11.21 * GiB, 8.61 * GiB, 1.65 * GiB
    seen: dict = {}

    def __init__(self, **kwargs):
        type(self).seen = kwargs
        explicit = kwargs.get("kv_cache_memory_bytes")
        if explicit is None:  # vLLM: share of node 0 minus what the worker already holds
            want = kwargs.get("gpu_memory_utilization", 0.9) * self.node_total - self.worker_rss
            if want <= 0:
                raise ValueError(f"Available memory on node 0 is less than requested memory for kv ({want})")
        elif explicit > self.node_free:
            raise ValueError("Available memory on node 0 (8.61/11.21 GiB) on kv cache allocation is less than "
                             "requested memory for kv")


@pytest.fixture
def node0_vllm(monkeypatch):
    """A fake `vllm` module (no engine, no import cost) on a CPU host; yields the fake LLM class."""
    import types

    from llmrec.llm import vllm_engine

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=_Node0LLM))
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return _Node0LLM


def test_cpu_kv_cache_is_sized_in_bytes_from_the_model_shape(node0_vllm, model_dir: Path):
    from llmrec.llm import VLLMBackend
    from llmrec.llm.vllm_engine import kv_bytes_per_token

    per_token = kv_bytes_per_token(model_dir, "float32")
    cfg = json.loads((model_dir / "config.json").read_text())
    assert per_token == cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * 4
    assert kv_bytes_per_token(model_dir, "bfloat16") == per_token // 2
    VLLMBackend(LLMConfig(max_model_len=1024, max_num_seqs=16, enable_lora=False))
    seen = node0_vllm.seen
    assert seen["kv_cache_memory_bytes"] == 1024 * 16 * per_token and seen["max_num_seqs"] == 16
    assert "gpu_memory_utilization" not in seen  # a node-0 share is never asked for on CPU
    VLLMBackend(LLMConfig(kv_cache_bytes=300 * 2**20, enable_lora=False))  # explicit bytes win
    assert node0_vllm.seen["kv_cache_memory_bytes"] == 300 * 2**20


def test_derived_kv_budget_has_a_floor_and_a_cap():
    from llmrec.llm.vllm_engine import KV_CACHE_CAP, KV_CACHE_FLOOR, kv_cache_bytes

    assert kv_cache_bytes(LLMConfig(max_model_len=256, max_num_seqs=1), 1000) == KV_CACHE_FLOOR
    assert kv_cache_bytes(LLMConfig(max_model_len=4096, max_num_seqs=256), 46080) == KV_CACHE_CAP
    assert kv_cache_bytes(LLMConfig(max_model_len=1024, max_num_seqs=16), 46080) == 1024 * 16 * 46080
    with pytest.raises(ValidationError, match="kv_cache_bytes"):
        LLMConfig(kv_cache_bytes=1024)


def test_engine_start_failure_names_the_config_field(node0_vllm, model_dir: Path):
    from llmrec.errors import EngineError
    from llmrec.llm import VLLMBackend

    with pytest.raises(EngineError, match=r"lower LLMConfig.kv_cache_bytes \(now 10737418240\)") as info:
        VLLMBackend(LLMConfig(kv_cache_bytes=10 * GiB, enable_lora=False))
    assert "node 0" in str(info.value) and isinstance(info.value.__cause__, ValueError)


def test_cuda_keeps_the_gpu_memory_share(node0_vllm, model_dir: Path, monkeypatch):
    from llmrec.llm import VLLMBackend, vllm_engine

    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    VLLMBackend(LLMConfig(gpu_memory_utilization=0.5, enable_lora=False))
    assert node0_vllm.seen["gpu_memory_utilization"] == 0.5 and "kv_cache_memory_bytes" not in node0_vllm.seen


def test_make_backend_builds_what_the_config_names(tmp_path: Path):
    with pytest.raises(ConnectionError, match="unreachable"):
        make_backend(LLMConfig(backend="server", server_url="http://127.0.0.1:9", request_timeout_s=2))
    with pytest.raises(ModelError, match="no config.json"):
        make_backend(LLMConfig(backend="transformers", model=str(tmp_path)))


# --- transformers on the real model ---------------------------------------------------------------


def make_lora(model_dir: Path, out: Path, r: int = 8) -> Path:
    """A fresh, random (non-zero B) peft LoRA adapter, as `finetune` would save one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(model_dir: Path, tmp_path_factory) -> Path:
    return make_lora(model_dir, tmp_path_factory.mktemp("lora") / "tiny-lora")


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> TransformersBackend:
    backend = make_backend(LLMConfig(backend="transformers", batch_size=2, seed=7))
    assert isinstance(backend, TransformersBackend) and backend.model_dir == model_dir
    return backend


def test_transformers_generates_batched_like_one_by_one(hf: TransformersBackend):
    batched = hf.generate(PROMPTS, max_tokens=12)  # batch_size=2: one padded pair, then one alone
    single = [hf.generate([p], max_tokens=12)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert "Paris" in batched[0].text and batched[0].finish_reason == "stop"
    assert all(0 < g.n_output_tokens <= 12 and g.n_prompt_tokens > 20 for g in batched)
    assert batched[2].finish_reason == "length" and batched[2].n_output_tokens == 12


def test_frequency_penalty_lowers_generated_tokens_by_their_count():
    import torch

    from llmrec.llm import FrequencyPenalty

    ids = torch.tensor([[9, 5, 5, 5, 7], [9, 9, 1, 2, 3]])  # (B=2, T=5); the first 2 tokens are the prompt
    out = FrequencyPenalty(0.5, prompt_len=2)(ids, torch.zeros(2, 10))
    assert out[0, 5] == -1.0 and out[0, 7] == -0.5 and out[0, 9] == 0.0  # prompt tokens are not penalised
    assert out[1, [1, 2, 3]].tolist() == [-0.5, -0.5, -0.5] and out[1, 9] == 0.0
    only = torch.zeros(10, dtype=torch.bool)
    only[5] = True  # e.g. a word token; 7 stands for JSON punctuation, left unpenalised
    masked = FrequencyPenalty(0.5, prompt_len=2, only=only)(ids, torch.zeros(2, 10))
    assert masked[0, 5] == -1.0 and masked[0, 7] == 0.0


def test_transformers_sampling_follows_the_seed(hf: TransformersBackend, model_dir: Path):
    a = hf.generate(PROMPTS[1:2], max_tokens=10, temperature=1.0)
    assert a == hf.generate(PROMPTS[1:2], max_tokens=10, temperature=1.0)
    other = TransformersBackend(LLMConfig(backend="transformers", seed=8))
    other.model = hf.model  # same weights, only the seed differs
    assert other.generate(PROMPTS[1:2], max_tokens=10, temperature=1.0) != a


def test_transformers_scores_choices_as_first_token_log_probs(hf: TransformersBackend):
    scores = hf.score_choices(RANK_PROMPT + PROMPTS[:1], CHOICES)
    assert len(scores) == 2 and all(len(s) == 4 and all(x < 0 for x in s) for s in scores)
    first = hf.generate(RANK_PROMPT, max_tokens=1)[0].text
    if first in CHOICES:  # the greedy first token is the arg-max of the same distribution
        assert max(range(4), key=lambda i: scores[0][i]) == CHOICES.index(first)
    assert sum(pow(2.718281828, x) for x in scores[0]) <= 1.0 + 1e-5


def test_transformers_adapter_changes_then_restores_scores(hf: TransformersBackend, adapter: Path):
    base = hf.score_choices(RANK_PROMPT, CHOICES)
    tuned = hf.score_choices(RANK_PROMPT, CHOICES, adapter=str(adapter))
    assert max(abs(a - b) for a, b in zip(base[0], tuned[0])) > 1e-3
    np.testing.assert_allclose(hf.score_choices(RANK_PROMPT, CHOICES), base, atol=1e-5)
    with pytest.raises(AdapterError, match="adapter_config.json"):
        hf.generate(PROMPTS[:1], adapter=str(adapter.parent / "missing"))


def test_transformers_dtype_is_honoured(model_dir: Path):
    import torch

    bf16 = TransformersBackend(LLMConfig(backend="transformers", dtype="bfloat16"))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="max_model_len=256"):
        TransformersBackend(LLMConfig(backend="transformers", max_model_len=256)).generate(PROMPTS[:1], max_tokens=240)


# --- Real vLLM engine (slow; one engine for the whole class) ---------------------------------------


@pytest.mark.slow
class TestVLLMEngine:
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, model_dir: Path):
        from llmrec.llm import VLLMBackend

        start = time.perf_counter()
        backend = make_backend(LLMConfig(max_model_len=1024, max_num_seqs=16, max_lora_rank=8,
                                         max_loras=1, seed=1))
        assert isinstance(backend, VLLMBackend)
        print(f"\nvLLM engine start: {time.perf_counter() - start:.1f} s")
        yield backend
        backend.close()

    def test_engine_uses_the_config(self, engine):
        vc = engine.llm.llm_engine.vllm_config
        assert vc.lora_config.max_lora_rank == 8 and vc.lora_config.max_loras == 1
        assert vc.model_config.max_model_len == 1024 and vc.scheduler_config.max_num_seqs == 16
        assert vc.cache_config.kv_cache_memory_bytes == 1024 * 16 * 30 * 2 * 3 * 64 * 4  # SmolLM2-135M, fp32
        assert vc.model_config.enforce_eager and vc.model_config.seed == 1
        assert str(vc.model_config.dtype) == "torch.float32"

    def test_json_schema_output_is_valid(self, engine):
        prompts = [[{"role": "user", "content": f"Give a movie title as t and its year as n. Movie {i}."}]
                   for i in range(4)]
        start = time.perf_counter()
        out = engine.generate(prompts, json_schema=Pick.model_json_schema(), max_tokens=48)
        elapsed = time.perf_counter() - start
        print(f"\nvLLM JSON: {sum(g.n_output_tokens for g in out) / elapsed:.1f} tok/s over {len(out)} prompts")
        for g in out:
            Pick.model_validate_json(g.text)
            assert "\n" not in g.text  # compact: no free whitespace between JSON tokens

    def test_lora_adapter_served_and_rank_checked(self, engine, hf, adapter: Path, tmp_path: Path):
        base = engine.generate(PROMPTS[:2], json_schema=Pick.model_json_schema(), max_tokens=24)
        out = engine.generate(PROMPTS[:2], json_schema=Pick.model_json_schema(), max_tokens=24,
                              adapter=str(adapter))
        assert [g.text for g in out] != [g.text for g in base]  # the adapter is applied
        for g in out:  # a random adapter may ramble (e.g. endless digits), but only inside the schema
            if g.finish_reason == "stop":
                Pick.model_validate_json(g.text)
            else:
                assert g.finish_reason == "length" and g.text.startswith('{"t":')
        want = hf.score_choices(RANK_PROMPT, CHOICES, adapter=str(adapter))
        np.testing.assert_allclose(engine.score_choices(RANK_PROMPT, CHOICES, adapter=str(adapter)), want, atol=2e-2)
        big = tmp_path / "big"
        big.mkdir()
        (big / "adapter_config.json").write_text(json.dumps({"r": 16}))
        with pytest.raises(AdapterError, match="r=16 > max_lora_rank=8"):
            engine.generate(PROMPTS[:1], adapter=str(big))

    def test_greedy_agrees_with_transformers(self, engine, hf):
        tok = hf.tokenizer
        fast = engine.generate(PROMPTS, max_tokens=16)
        ref = hf.generate(PROMPTS, max_tokens=16)
        same = total = 0
        for f, r in zip(fast, ref):
            a, b = tok(f.text)["input_ids"][:16], tok(r.text)["input_ids"][:16]
            n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            same, total = same + n, total + max(len(a), len(b))
        assert same / total >= 0.8, (fast, ref)
        # The same frequency penalty in both paths: greedy answers still agree, and differ from unpenalised ones.
        fast_p = engine.generate(PROMPTS, max_tokens=24, frequency_penalty=1.5)
        ref_p = hf.generate(PROMPTS, max_tokens=24, frequency_penalty=1.5)
        agree = sum(f.text[:30] == r.text[:30] for f, r in zip(fast_p, ref_p))
        assert agree >= len(PROMPTS) - 1, (fast_p, ref_p)
        np.testing.assert_allclose(engine.score_choices(RANK_PROMPT, CHOICES),
                                   hf.score_choices(RANK_PROMPT, CHOICES), atol=2e-2)


# --- Real OpenAI-compatible server on loopback (slow) ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_backend_against_a_real_vllm_server(model_dir: Path, adapter: Path, hf, tmp_path: Path):
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "base", "--dtype", "float32", "--enforce-eager",
           "--kv-cache-memory-bytes", str(512 * 2**20), "--max-model-len", "1024", "--enable-lora", "--max-lora-rank", "8",
           "--lora-modules", f"{adapter.name}={adapter}",
           "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0-1")}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 900
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited {proc.returncode}:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("vLLM server did not become healthy in 900 s")
            time.sleep(2)
        config = LLMConfig(backend="server", server_url=f"http://127.0.0.1:{port}", server_model="base",
                           batch_size=2, request_timeout_s=120)
        server = make_backend(config)
        assert server.model_name == "base" and server.client.timeout.read == 120
        out = server.generate(PROMPTS[:2], json_schema=Pick.model_json_schema(), max_tokens=48)
        assert all(Pick.model_validate_json(g.text) and g.n_prompt_tokens > 20 for g in out)
        assert all("\n" not in g.text for g in out)
        tuned = server.generate(PROMPTS[:1], json_schema=Pick.model_json_schema(), max_tokens=48, adapter=adapter.name)
        assert Pick.model_validate_json(tuned[0].text)
        np.testing.assert_allclose(  # a folder is served under its name
            server.score_choices(RANK_PROMPT, CHOICES, adapter=str(adapter)),
            hf.score_choices(RANK_PROMPT, CHOICES, adapter=str(adapter)), atol=2e-2)
        with pytest.raises(AdapterError, match="not served"):
            server.generate(PROMPTS[:1], adapter="nope")
        with pytest.raises(ValueError, match="serves base models"):
            make_backend(config.model_copy(update={"server_model": "other"}))
        server.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# --- CUDA (skipped on CPU machines) ---------------------------------------------------------------


@pytest.mark.gpu
def test_vllm_on_cuda_with_auto_dtype(model_dir: Path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    backend = make_backend(LLMConfig(dtype="auto", enforce_eager=False))
    try:
        out = backend.generate(PROMPTS, json_schema=Pick.model_json_schema(), max_tokens=48)
        assert all(Pick.model_validate_json(g.text) for g in out)
        assert len(backend.score_choices(RANK_PROMPT, CHOICES)[0]) == 4
    finally:
        backend.close()


def test_block_size_reaches_vllm_only_when_set(node0_vllm, model_dir: Path):
    from llmrec.llm import VLLMBackend

    VLLMBackend(LLMConfig(max_model_len=1024, max_num_seqs=16, enable_lora=False))
    assert "block_size" not in node0_vllm.seen  # vLLM's own default per platform
    VLLMBackend(LLMConfig(max_model_len=1024, max_num_seqs=16, enable_lora=False, block_size=32))
    assert node0_vllm.seen["block_size"] == 32
    with pytest.raises(ValueError, match="multiple"):
        LLMConfig(block_size=40)
