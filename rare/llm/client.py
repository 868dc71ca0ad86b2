"""One async client for every provider, on litellm: cache, budget, rate limits, concurrency,
retries, usage and cost, online or through the provider's batch API.

A call goes: response cache (a hit costs nothing) -> concurrency slot -> rate limiter ->
budget check -> litellm, or in batch mode into the batcher. Retries are ours (litellm's and
the OpenAI SDK's are off) so that Retry-After is honoured, backoff is exponential with
jitter, a 429 slows the whole client down, and errors that retrying cannot fix surface at once.

Two kinds of retry, for every step: a failed call (429, 5xx, timeout, dropped connection, a
200 that is not a completion) is retried with backoff (`max_retries`); an answer that came
back unusable (empty, cut, malformed for the step's `check`) is asked again as a fresh call
(`content_retries`) that bypasses the response cache, and is never stored (see
`rare.llm.content`). Billed answers that were not used count in `Usage.failed_*`.
"""

import asyncio
import os
import warnings
from collections.abc import Callable
from multiprocessing.context import get_spawning_popen

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from rare.config.paths import in_multirun
from rare.llm import litellm  # imported on first use
from rare.llm.batch import Batcher
from rare.llm.budget import BudgetExceeded, run_spend, use_counter  # noqa: F401  (BudgetExceeded: re-exported)
from rare.llm.cache import ResponseCache, request_key
from rare.llm.call_logging import unlogged_calls
from rare.llm.completion import Completion, answer_text, batch_answer, replayed, stored_answer
from rare.llm.content import (
    LENGTH,
    UnusableAnswer,
    answer_cap,
    answers_under,
    content_fault,
    cut_at_cap,
    repeats,
    request_for_key,
)
from rare.llm.failures import ProviderRejected, classified  # noqa: F401  (ProviderRejected: re-exported)
from rare.llm.inflight import InflightClaims
from rare.llm.pricing import Pricing
from rare.llm.rate_limit import TPM_COUNTS, estimate_prompt_tokens, shared_limiter
from rare.llm.retry import is_rate_limited, is_transient, retry_after_seconds, wait_for_retry
from rare.llm.usage import Usage

STRUCTURED_OUTPUT_MODES = ("json_schema", "json_object_schema", "json_object", "none")
MODES = ("online", "batch")
BATCH_DEFAULTS = {"max_requests": 5000, "max_wait_s": 2.0, "poll_s": 10.0, "state_dir": None}
BUDGET_GRACE_S = 0.1  # at the budget, wait this long after the last call in flight before stopping


class LLMClient:
    """Chat completions through litellm.

    Args:
        model: litellm model string, e.g. `openai/gpt-4o`, `anthropic/claude-3-5-sonnet-latest`.
        api_base: server URL for OpenAI-compatible servers (vLLM, Ollama, llama.cpp, proxies).
        api_key: the key itself; prefer `api_key_env` so it never sits in a config file.
        api_key_env: environment variable holding the key; None for servers that need none.
        concurrency: requests in flight at once (per worker process).
        workers: deprecated, use `executor.workers` (`rare.executors.local.executor.LocalExecutor`); when
            set, and `executor.workers` is not, the processes this step is sharded over.
        timeout_s: per-request timeout.
        max_retries: retries of a transient failure (429, 5xx, timeouts, dropped connections,
            a 200 that is not a completion).
        content_retries: fresh calls after an unusable answer (empty, cut at the token cap or
            short of it, malformed for the step); a fault that repeats stops them sooner.
        backoff_s / backoff_max_s: first and largest wait between retries (Retry-After wins).
        structured_output: how to ask for JSON: `json_schema` (OpenAI), `json_object_schema`
            (llama.cpp), `json_object` (JSON mode without a schema) or `none`.
        params: sampling parameters passed as they are (temperature, max_tokens, seed, ...).
        price: optional {input_per_mtok, output_per_mtok} in USD, for models litellm does not price
            (used as given in batch mode too).
        server: an embedded model server (see `conf/llm/local.yaml`) started by `open` and
            stopped by `close`; its URL becomes `api_base`.
        cache: reuse answers from the response cache (`cache_path`); None path = no cache.
        cache_mode: `readwrite`, or `readonly` (use cached answers, never store new ones).
        cache_path: the SQLite file of the response cache, shared by runs.
        cache_claims: claim a request in the cache file while it is asked, so runs sharing the
            cache at the same time (a parallel sweep) send it once and the others wait for its answer.
            None = only in a `--multirun` job: a claim costs two writes per request.
        rpm / tpm: requests / tokens per minute ceilings; None = none. A 429 slows down below them,
            and the provider's `x-ratelimit-*` headers are followed (see `rare.llm.rate_limit`).
        tpm_counts: what the provider's token limit counts for a request in flight: `used`
            (prompt + the completion it really generates: rare reserves the measured mean
            completion) or `max_tokens` (prompt + the cap, counted up front).
        max_cost_usd: run-wide budget in USD (all steps); None = none. Reaching it stops the run.
        expected_output_tokens: dry run only: completion tokens per call; None = `params.max_tokens`.
        mode: `online`, or `batch` (the provider's batch API, about half the price, slower).
        batch: batch-mode settings: max_requests, max_wait_s, poll_s, state_dir.
    """

    def __init__(
        self,
        model: str,
        api_base: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 16,
        workers: int | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        content_retries: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        structured_output: str = "json_schema",
        params: dict | None = None,
        price: dict | None = None,
        server=None,
        cache: bool = True,
        cache_mode: str = "readwrite",
        cache_path: str | None = None,
        cache_claims: bool | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        tpm_counts: str = "used",
        max_cost_usd: float | None = None,
        expected_output_tokens: int | None = None,
        mode: str = "online",
        batch: dict | None = None,
    ):
        if structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(f"structured_output must be one of {STRUCTURED_OUTPUT_MODES}, got {structured_output!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if tpm_counts not in TPM_COUNTS:
            raise ValueError(f"tpm_counts must be one of {TPM_COUNTS}, got {tpm_counts!r}")
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        if workers is not None:
            warnings.warn(
                f"llm.workers={workers} is deprecated: set executor.workers={workers} instead (the processes a big "
                "LLM step is sharded over, for every step); llm.workers still sets this step's for now",
                FutureWarning,
                stacklevel=2,
            )
        self.workers = None if workers is None else int(workers)  # deprecated: executor.workers
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.content_retries = max(0, int(content_retries))
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.structured_output = structured_output
        self.params = dict(params or {})
        self.price = dict(price) if price else None
        self.pricing = Pricing(model, self.price, mode)
        self.server = server
        self.cache = ResponseCache(cache_path, cache_mode) if cache and cache_path else None
        writable = self.cache is not None and self.cache.writable
        if cache_claims is None:
            cache_claims = in_multirun()
        self.claims = InflightClaims(self.cache.path) if writable and cache_claims and mode == "online" else None
        if self.claims is not None:
            self.cache.write_every = 1  # runs waiting on a claim look for the answer in the file
        self.rpm = float(rpm) if rpm else None
        self.tpm = float(tpm) if tpm else None
        self.tpm_counts = tpm_counts
        self.rate_share = 1.0  # this process's share of rpm / tpm (a step sharded over N processes: 1/N)
        self.max_cost_usd = float(max_cost_usd) if max_cost_usd is not None else None
        self.expected_output_tokens = int(expected_output_tokens) if expected_output_tokens else None
        self.mode = mode
        unknown = set(batch or {}) - set(BATCH_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown batch settings {sorted(unknown)}; known: {sorted(BATCH_DEFAULTS)}")
        self.batch = {**BATCH_DEFAULTS, **(batch or {})}
        if mode == "batch":
            # the runner keeps 2 x concurrency rows in flight: let it fill whole batches
            self.concurrency = max(self.concurrency, int(self.batch["max_requests"]))
        self.usage = Usage()
        self._in_flight = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop = None
        self._batcher: Batcher | None = None
        self._batcher_loop = None

    def __repr__(self) -> str:  # never shows the key
        return f"LLMClient(model={self.model!r}, api_base={self.api_base!r})"

    def __getstate__(self) -> dict:
        """Picklable for worker processes: loop-bound parts are rebuilt there.

        Pickled to spawn a process, the client takes the run's shared spend counter along, so
        the worker's calls count against the same `max_cost_usd` as everyone else's.
        """
        state = dict(self.__dict__)
        state.update(_semaphore=None, _semaphore_loop=None, _batcher=None, _batcher_loop=None, _in_flight=0)
        counter = run_spend().counter
        if get_spawning_popen() is not None and hasattr(counter, "get_obj"):  # a multiprocessing.Value
            state["_run_counter"] = counter
        return state

    def __setstate__(self, state: dict) -> None:
        counter = state.pop("_run_counter", None)
        self.__dict__.update(state)
        if counter is not None and run_spend().counter is not counter:
            use_counter(counter)

    def open(self) -> None:
        if self.server is not None:
            self.api_base = self.server.acquire()

    def close(self) -> None:
        if self.server is not None:
            self.server.release()
        if self.cache is not None:
            self.cache.close()

    def flush(self) -> None:
        """Write the answers the response cache keeps in memory (at the end of a step's rows)."""
        if self.cache is not None:
            self.cache.flush()

    def resolved_api_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def check(self) -> list[str]:
        """Problems found before any call: a missing API key, batch mode on a provider without it."""
        problems = []
        if self.api_key_env and not self.resolved_api_key():
            problems.append(
                f"model {self.model} needs an API key: set the environment variable {self.api_key_env} "
                f"(export {self.api_key_env}=...), or pick another provider, e.g. `rare llm=local` "
                f"(embedded model, no key) or `rare llm=vllm llm.api_base=http://host:8000/v1`"
            )
        if self.mode == "batch" and self.provider() != "openai":
            problems.append(
                f"llm.mode=batch uses the OpenAI-style batch API (/v1/files + /v1/batches), which {self.model} "
                f"({self.provider()}) does not offer through rare; use llm.mode=online"
            )
        return problems

    def provider(self) -> str:
        """litellm's provider name for the model (openai, anthropic, ...)."""
        try:
            return litellm.get_llm_provider(self.model)[1]
        except Exception:
            return self.model.partition("/")[0]

    def endpoint(self) -> str | None:
        """Who answers, for the cache key: the API base, or the embedded model (its port changes per run)."""
        if self.server is not None:
            return f"embedded:{getattr(self.server, 'model_path', type(self.server).__name__)}"
        return self.api_base.rstrip("/") if self.api_base else None

    def token_prices(self) -> tuple[float, float] | None:
        """USD per prompt and per completion token in the current mode; None if unknown."""
        return self.pricing.token_prices()

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

    def request_kwargs(
        self,
        messages: list[dict],
        json_schema: dict | None = None,
        schema_name: str = "answer",
        params: dict | None = None,
    ) -> dict:
        """Everything litellm receives for one call (also what a cache key is built from); `params` override `self.params`."""
        kwargs = {"model": self.model, "messages": messages, **self.params, **(params or {})}
        if json_schema is not None:
            response_format = self.response_format(json_schema, schema_name)
            if response_format is not None:
                kwargs["response_format"] = response_format
        return kwargs

    def cache_key(self, kwargs: dict) -> str:
        """The content address of a request: model, endpoint, messages, sampling params, response_format.

        The answer cap and transport parameters are left out (`rare.llm.content.request_for_key`):
        whether a stored answer answers a request under its cap is `answers_under`'s decision.
        """
        return request_key({**request_for_key(kwargs), "endpoint": self.endpoint()})

    async def complete(
        self,
        messages: list[dict],
        json_schema: dict | None = None,
        schema_name: str = "answer",
        params: dict | None = None,
        check: Callable[[str], object] | None = None,
        allow_cut: bool = True,
    ) -> Completion:
        """The first usable answer to one request, with its usage.

        Served from the response cache when it holds an answer to this request (under this cap).
        Failed calls are retried with backoff; an unusable answer (empty, cut at the cap when not
        `allow_cut`, cut short of it, or refused by `check(text)` raising ParseError) is asked
        again as a fresh call, bypassing the cache, up to `content_retries` times, and is never
        stored. Raises UnusableAnswer (with the fault's kind) when every attempt was unusable or
        the fault repeats, and BudgetExceeded instead of starting a paid call once the run has
        spent `max_cost_usd`.
        """
        kwargs = self.request_kwargs(messages, json_schema, schema_name, params)
        key = self.cache_key(kwargs) if self.cache is not None or self.mode == "batch" else None
        cap = answer_cap(kwargs)

        def usable(text: str, finish_reason, completion_tokens: int):
            return content_fault(text, finish_reason, completion_tokens, cap, check, allow_cut)

        def lookup() -> dict | None:
            stored = self.cache.get(key) if self.cache is not None else None
            if stored is None:
                stored = self._stored_under_legacy_key(kwargs, cap)
            if stored is None or not answers_under(stored, cap):
                return None
            if (
                usable(stored["text"], stored.get("finish_reason"), int(stored.get("completion_tokens") or 0))
                is not None
            ):
                return None  # stored before this step's checks: ask it again
            return stored

        stored = lookup()
        if stored is not None:
            return self._replay(stored)
        faults: list[tuple[str, str, str, bool]] = []
        for attempt in range(self.content_retries + 1):
            completion, paid = await self._attempt(key, kwargs, attempt, lookup)
            fault = usable(completion.text, completion.finish_reason, completion.completion_tokens)
            if fault is None:
                if paid and self.cache is not None:
                    self.cache.put(key, stored_answer(completion, cap))
                return completion
            if paid:
                self.usage.count_unused(completion)
            kind, reason = fault
            faults.append(
                (kind, reason, completion.text, kind == LENGTH and cut_at_cap(completion.completion_tokens, cap))
            )
            if attempt == self.content_retries or repeats(faults):
                break
            self.usage.count_retry(kind)
        attempts = f"{len(faults)} attempt" + ("s" if len(faults) > 1 else "")
        kind, reason, text, _ = faults[-1]
        raise UnusableAnswer(f"{reason} ({attempts})", kind, text, reason)

    def _stored_under_legacy_key(self, kwargs: dict, cap: int | None) -> dict | None:
        """An answer stored before cache keys left the cap out (their key was the whole request)."""
        if self.cache is None or self.mode == "batch" or not self.cache.holds_old_keys():
            return None
        stored = self.cache.get(request_key({**kwargs, "endpoint": self.endpoint()}))
        return None if stored is None else {**stored, "max_tokens": cap}  # asked under exactly this cap

    async def _attempt(
        self, key: str | None, kwargs: dict, attempt: int, lookup: Callable[[], dict | None]
    ) -> tuple[Completion, bool]:
        """One answer, and whether it was paid for (False: another run's, from the cache)."""
        if self.mode == "batch":  # a retry is a request of its own in the batch file
            return await self._complete_in_batch(key if attempt == 0 else f"{key}~retry{attempt}", kwargs), True
        if self.claims is None or attempt:
            return await self._ask(kwargs), True
        async with self.claims.claimed(key, lookup) as stored:  # another run may be asking it now
            if stored is not None:
                return self._replay(stored), False
            return await self._ask(kwargs), True

    async def _ask(self, kwargs: dict) -> Completion:
        async with self._slots():
            response = await self._call_with_retries(kwargs)
        return self._record(response, plain_text="response_format" not in kwargs)

    async def _budget_gate(self) -> None:
        """Let a paid call start only under budget; at the budget, let calls in flight finish first."""
        try:
            run_spend().check(self.max_cost_usd)
        except BudgetExceeded:
            while self._in_flight:
                await asyncio.sleep(0.05)
            await asyncio.sleep(BUDGET_GRACE_S)  # rows whose answers just arrived are written before the stop
            raise

    def pacing(self) -> dict | None:
        """What pacing met (429s, rate cuts, holds on the provider's headers); None without rpm/tpm limits."""
        if not (self.rpm or self.tpm):
            return None
        state = self._limiter().state()
        return {name: state[name] for name in ("rate_limited", "cuts", "held")}

    def _limiter(self):
        share = lambda limit: limit * self.rate_share if limit else limit  # noqa: E731
        return shared_limiter(self.model, self.endpoint(), share(self.rpm), share(self.tpm), self.tpm_counts)

    async def _call_with_retries(self, kwargs: dict):
        limiter = self._limiter()
        prompt = estimate_prompt_tokens(kwargs["messages"]) if limiter.limits_tokens else 0
        tokens = limiter.reservation(prompt, answer_cap(kwargs)) if prompt else 0
        started = 0.0

        def before_sleep(retry_state) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            self.usage.count_retry(type(error).__name__ if error is not None else "error")
            if error is not None and is_rate_limited(error):
                advised = retry_after_seconds(error)
                limiter.on_rate_limited(started, None if advised is None else min(advised, self.backoff_max_s))

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_for_retry(self.backoff_s, self.backoff_max_s),
            before_sleep=before_sleep,
            reraise=True,
        )
        await self._budget_gate()
        self._in_flight += 1
        try:
            async for attempt in retrying:
                with attempt:
                    started = await limiter.acquire(tokens)
                    with unlogged_calls():  # litellm's logging queue would keep every call (call_logging)
                        response = await litellm.acompletion(
                            **kwargs,
                            api_base=self.api_base,
                            api_key=self.resolved_api_key(),
                            timeout=self.timeout_s,
                            max_retries=0,
                            num_retries=0,
                            drop_params=True,
                        )
            limiter.on_success()
            usage = getattr(response, "usage", None)
            limiter.on_answer(
                tokens,
                prompt,
                int(getattr(usage, "prompt_tokens", 0) or 0),
                int(getattr(usage, "completion_tokens", 0) or 0),
                getattr(response, "_response_headers", None),
            )
            return response
        except Exception as error:
            raise self._failure(error)  # noqa: B904 - the error itself, or a wrapper whose __cause__ it is
        finally:
            self._in_flight -= 1

    def _failure(self, error: Exception) -> Exception:
        return classified(error, self.model, self.api_key_env or "llm.api_key", self.usage.errors)

    def _batcher_here(self) -> Batcher:
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher_loop is not loop:
            settings = self.batch
            self._batcher, self._batcher_loop = (
                Batcher(
                    api_base=self.api_base,
                    api_key=self.resolved_api_key(),
                    max_requests=settings["max_requests"],
                    max_wait_s=settings["max_wait_s"],
                    poll_s=settings["poll_s"],
                    state_dir=settings["state_dir"],
                    on_results=self._store_batch_results if self.cache is not None else None,
                    timeout_s=self.timeout_s,
                ),
                loop,
            )
        return self._batcher

    def batch_body(self, kwargs: dict) -> dict:
        """One request line's body: the provider's own model name, no litellm-only keys, no nulls."""
        body = {k: v for k, v in kwargs.items() if v is not None}
        body["model"] = litellm.get_llm_provider(self.model)[0]
        return body

    async def _complete_in_batch(self, key: str, kwargs: dict) -> Completion:
        await self._budget_gate()
        self._in_flight += 1
        try:
            body = await self._batcher_here().submit(key, self.batch_body(kwargs))
        except Exception as error:
            raise self._failure(error)  # noqa: B904 - the error itself, or a wrapper whose __cause__ it is
        finally:
            self._in_flight -= 1
        answer = batch_answer(body)
        return self._account(answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens, None)

    def _store_batch_results(self, answered: list[tuple[str, dict]]) -> None:
        """Put every answer of a finished batch in the cache (also those no row waits for yet)."""
        items, cap = [], answer_cap(self.params)
        for key, body in answered:
            answer = batch_answer(body)
            if "~retry" not in key and content_fault(answer.text, answer.finish_reason, 0, cap, None, False) is None:
                answer.cost_usd = self.pricing.of_tokens(answer.prompt_tokens, answer.completion_tokens)
                items.append((key, stored_answer(answer, cap)))
        self.cache.put_many(items)

    def _replay(self, stored: dict) -> Completion:
        """A cached answer: its tokens count, its cost is saved."""
        completion = replayed(stored)
        self.usage.cached_calls += 1
        self.usage.prompt_tokens += completion.prompt_tokens
        self.usage.completion_tokens += completion.completion_tokens
        self.usage.saved_usd += float(stored.get("cost_usd", 0.0))
        return completion

    def _record(self, response, plain_text: bool = True) -> Completion:
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        text = answer_text(choice.message, plain_text)
        return self._account(text, choice.finish_reason, prompt_tokens, completion_tokens, response)

    def _account(self, text: str, finish_reason, prompt_tokens: int, completion_tokens: int, response) -> Completion:
        """Count one answered call in this client's usage and in the run's spend."""
        cost = self.pricing.of_response(response, prompt_tokens, completion_tokens)
        self.usage.calls += 1
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        self.usage.cost_usd += cost
        run_spend().add(cost)
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
        )
