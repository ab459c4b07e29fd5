r"""`VLLMServerBackend`: the `LLMBackend` for a running OpenAI-compatible vLLM server (plain HTTP, no vLLM import).

Start the server with the module (the `vllm` console script fails in this environment); CPU flags shown:

    VLLM_CPU_OMP_THREADS_BIND=0-1 python -m vllm.entrypoints.openai.api_server --model DIR \
        --served-model-name base --dtype float32 --enforce-eager --gpu-memory-utilization 0.35 \
        --max-model-len 4096 --enable-lora --max-lora-rank 16 --lora-modules NAME=ADAPTER_DIR \
        --structured-outputs-config '{"backend": "xgrammar", "disable_any_whitespace": true}' \
        --host 127.0.0.1 --port 8000

`DIR` is `llmrec model prepare`'s folder. `adapter=NAME` (or an adapter folder whose name is NAME) selects the
LoRA module; with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` on the server, unknown adapter folders are loaded on
first use through `/v1/load_lora_adapter`. JSON schemas go as `response_format` json_schema;
`disable_any_whitespace` is a server-wide switch in vLLM (the per-request flag is ignored), and without it
SmolLM2 pads JSON answers with newlines until max_tokens.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from llmrec.errors import AdapterError
from llmrec.llm.base import Generation, Messages


class VLLMServerBackend:
    """Client of a running vLLM OpenAI-compatible server; a batch is sent as concurrent requests."""

    name = "server"
    enforces_schema = True  # vLLM's server honours response_format json_schema

    def __init__(self, base_url: str, model_name: str | None = None, *, concurrency: int = 16,
                 timeout_s: float = 600.0, seed: int = 0):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self.concurrency, self.seed = concurrency, seed
        served = self._served()
        bases = [m["id"] for m in served if not m.get("parent")]
        if model_name is not None and model_name not in bases:
            raise ValueError(f"server {self.base_url} serves base models {bases}, not {model_name!r}")
        self.model_name = model_name or bases[0]

    def _served(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/models")["data"]

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        try:
            r = self.client.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise ConnectionError(f"vLLM server {self.base_url}{path} unreachable: {e!r}") from e
        if r.status_code != 200:
            raise RuntimeError(f"vLLM server {self.base_url}{path} answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def _model_for(self, adapter: str | None) -> str:
        """Base name, or the LoRA module name: `adapter` is a served name or a folder whose name is served."""
        if adapter is None:
            return self.model_name
        name = Path(adapter).name if os.sep in adapter or Path(adapter).is_dir() else adapter
        if name in {m["id"] for m in self._served()}:
            return name
        if Path(adapter).is_dir():  # works only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True on the server
            try:
                self.client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(
                    Path(adapter).resolve())}).raise_for_status()
                return name
            except Exception as e:  # noqa: BLE001 - turned into the clear error below
                reason = repr(e)
        else:
            reason = "not a served module name nor an adapter folder"
        raise AdapterError(f"adapter {adapter!r} is not served by {self.base_url} ({reason}); start the server "
                           f"with --enable-lora --lora-modules {name}=ADAPTER_DIR")

    def _map(self, fn: Callable[[Messages], Any], prompts: Sequence[Messages]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, prompts))

    def generate(self, prompts, *, json_schema=None, max_tokens=256, temperature=0.0, adapter=None,
                 frequency_penalty=0.0):
        model = self._model_for(adapter)
        extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": json_schema}}
                 } if json_schema is not None else {}

        def one(messages: Messages) -> Generation:
            r = self._request("POST", "/v1/chat/completions", {
                "model": model, "messages": list(messages), "max_tokens": max_tokens,
                "temperature": temperature, "frequency_penalty": frequency_penalty, "seed": self.seed,
                **extra})  # fmt: skip
            choice, usage = r["choices"][0], r["usage"]
            return Generation(text=choice["message"]["content"] or "", n_prompt_tokens=usage["prompt_tokens"],
                              n_output_tokens=usage["completion_tokens"], finish_reason=choice["finish_reason"])

        return self._map(one, prompts)

    def score_choices(self, prompts, choices, *, adapter=None):
        model = self._model_for(adapter)
        cids = []
        for c in choices:
            toks = self._request("POST", "/tokenize", {"model": self.model_name, "prompt": c,
                                                       "add_special_tokens": False})["tokens"]
            if len(toks) != 1:
                raise ValueError(f"choice {c!r} is {len(toks)} tokens; score_choices needs single-token choices")
            cids.append(toks[0])

        def one(messages: Messages) -> list[float]:
            r = self._request("POST", "/v1/chat/completions", {
                "model": model, "messages": list(messages), "max_tokens": 1, "temperature": 0.0,
                "logprobs": True, "logprob_token_ids": cids, "return_tokens_as_token_ids": True})  # fmt: skip
            top = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            got = {int(t["token"].rsplit(":", 1)[1]): t["logprob"] for t in top}
            return [float(got[t]) for t in cids]

        return self._map(one, prompts)

    def close(self) -> None:
        self.client.close()
