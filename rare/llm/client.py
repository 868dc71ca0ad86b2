"""One async client for every provider, on litellm: concurrency, retries, usage and cost.

Retries are ours (litellm's and the OpenAI SDK's are off) so that Retry-After is honoured,
backoff is exponential with jitter, and errors that retrying cannot fix surface at once.
"""

import asyncio
import os
from dataclasses import dataclass, field

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch prices at import

import litellm  # noqa: E402
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt  # noqa: E402

from rare.errors import RunAborted  # noqa: E402
from rare.llm.retry import is_transient, wait_for_retry  # noqa: E402

litellm.suppress_debug_info = True

STRUCTURED_OUTPUT_MODES = ("json_schema", "json_object_schema", "json_object", "none")


class ProviderRejected(RunAborted):
    """The provider refuses every request (bad key, unknown model): stop instead of failing each row."""


@dataclass
class Completion:
    """One model answer with what it cost."""

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class Usage:
    """Running totals for one client (one step)."""

    calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "errors": dict(self.errors),
        }


class LLMClient:
    """Chat completions through litellm.

    Args:
        model: litellm model string, e.g. `openai/gpt-4o`, `anthropic/claude-3-5-sonnet-latest`.
        api_base: server URL for OpenAI-compatible servers (vLLM, Ollama, llama.cpp, proxies).
        api_key: the key itself; prefer `api_key_env` so it never sits in a config file.
        api_key_env: environment variable holding the key; None for servers that need none.
        concurrency: requests in flight at once.
        timeout_s: per-request timeout.
        max_retries: retries of a transient failure (429, 5xx, timeouts, dropped connections).
        backoff_s / backoff_max_s: first and largest wait between retries (Retry-After wins).
        structured_output: how to ask for JSON: `json_schema` (OpenAI), `json_object_schema`
            (llama.cpp), `json_object` (JSON mode without a schema) or `none`.
        params: sampling parameters passed as they are (temperature, max_tokens, seed, ...).
        price: optional {input_per_mtok, output_per_mtok} in USD, for models litellm does not price.
        server: an embedded model server (see `conf/llm/local.yaml`) started by `open` and
            stopped by `close`; its URL becomes `api_base`.
    """

    def __init__(
        self,
        model: str,
        api_base: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        structured_output: str = "json_schema",
        params: dict | None = None,
        price: dict | None = None,
        server=None,
    ):
        if structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(f"structured_output must be one of {STRUCTURED_OUTPUT_MODES}, got {structured_output!r}")
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.structured_output = structured_output
        self.params = dict(params or {})
        self.price = dict(price) if price else None
        self.server = server
        self.usage = Usage()
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop = None

    def __repr__(self) -> str:  # never shows the key
        return f"LLMClient(model={self.model!r}, api_base={self.api_base!r})"

    def open(self) -> None:
        if self.server is not None:
            self.api_base = self.server.acquire()

    def close(self) -> None:
        if self.server is not None:
            self.server.release()

    def resolved_api_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def check(self) -> list[str]:
        """Problems found before any call: today, a missing API key."""
        if self.api_key_env and not self.resolved_api_key():
            return [
                f"model {self.model} needs an API key: set the environment variable {self.api_key_env} "
                f"(export {self.api_key_env}=...), or pick another provider, e.g. `rare llm=local` "
                f"(embedded model, no key) or `rare llm=vllm llm.api_base=http://host:8000/v1`"
            ]
        return []

    def response_format(self, schema: dict, name: str) -> dict | None:
        if self.structured_output == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        if self.structured_output == "json_object_schema":
            return {"type": "json_object", "schema": schema}
        if self.structured_output == "json_object":
            return {"type": "json_object"}
        return None

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore, self._semaphore_loop = asyncio.Semaphore(self.concurrency), loop
        return self._semaphore

    def request_kwargs(self, messages: list[dict], json_schema: dict | None = None, schema_name: str = "answer") -> dict:
        """Everything litellm receives for one call (also what a cache key is built from)."""
        kwargs = {"model": self.model, "messages": messages, **self.params}
        if json_schema is not None:
            response_format = self.response_format(json_schema, schema_name)
            if response_format is not None:
                kwargs["response_format"] = response_format
        return kwargs

    async def complete(self, messages: list[dict], json_schema: dict | None = None, schema_name: str = "answer") -> Completion:
        """Ask once (retrying transient failures); returns the answer and its usage."""
        kwargs = self.request_kwargs(messages, json_schema, schema_name)
        async with self._slots():
            response = await self._call_with_retries(kwargs)
        return self._record(response)

    async def _call_with_retries(self, kwargs: dict):
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_for_retry(self.backoff_s, self.backoff_max_s),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await litellm.acompletion(
                        **kwargs,
                        api_base=self.api_base,
                        api_key=self.resolved_api_key(),
                        timeout=self.timeout_s,
                        max_retries=0,
                        num_retries=0,
                        drop_params=True,
                    )
        except (litellm.AuthenticationError, litellm.PermissionDeniedError, litellm.NotFoundError) as error:
            raise ProviderRejected(
                f"the provider refused {self.model}: {type(error).__name__}: {_short(error)}. "
                f"Check the API key ({self.api_key_env or 'llm.api_key'}) and the model name (llm.model); "
                f"finished rows are kept, rerun with resume to continue."
            ) from error
        except Exception as error:
            name = type(error).__name__
            self.usage.errors[name] = self.usage.errors.get(name, 0) + 1
            raise

    def _count_retry(self, retry_state) -> None:
        self.usage.retries += 1

    def _record(self, response) -> Completion:
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self._cost(response, prompt_tokens, completion_tokens)
        self.usage.calls += 1
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        self.usage.cost_usd += cost
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
        )

    def _cost(self, response, prompt_tokens: int, completion_tokens: int) -> float:
        if self.price is not None:
            return (
                prompt_tokens * float(self.price.get("input_per_mtok", 0))
                + completion_tokens * float(self.price.get("output_per_mtok", 0))
            ) / 1e6
        try:
            return float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # litellm raises for models it has no price for
            return 0.0


def _short(error: Exception) -> str:
    return str(error).replace("\n", " ")[:300]
