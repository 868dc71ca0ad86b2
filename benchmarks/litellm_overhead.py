"""litellm's client CPU per call, by setting: which litellm settings and per-call arguments cut it.

Each variant runs in its own process (litellm's settings are global) against one test server
(50 ms latency): it warms up, then times 2,000 `litellm.acompletion` calls, 128 in flight,
with `time.process_time`. Variants alternate over the repeats, so a change in the machine's
load hits them all alike; the table gives the median CPU ms per call and the ratio to
`rare_before` (what rare passed before this benchmark was written: the OpenAI SDK path,
`drop_params=True`). `base_handler` is litellm's own HTTP handler for OpenAI-style providers
(the undocumented EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER switch): the only variant that cut
the CPU (2.85 against 3.32 ms per call, 1.17x, at load 3-5), but rare does not turn it on: it is
not in litellm's documentation, it files a 200 that is not a completion under another error type,
and rare's doc2query step gained only ~1.1x with it.

Usage: python benchmarks/litellm_overhead.py [--n 2000] [--repeats 3] [--variants a,b,...]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-table download at import

CONCURRENCY = 128
WARM_UP = 200
PRICES = {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05}  # gpt-4o's, as rare's llm.price would give

# litellm's own HTTP handler for OpenAI-style providers instead of the OpenAI SDK (undocumented)
BASE_HANDLER = "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER"

# name -> (environment, litellm module settings, extra per-call arguments beside `base_arguments`)
VARIANTS = {
    "rare_before": ({BASE_HANDLER: "false"}, {}, {"drop_params": True}),
    "no_drop_params": ({BASE_HANDLER: "false"}, {}, {}),
    "no_log": ({BASE_HANDLER: "false"}, {}, {"drop_params": True, "no-log": True}),
    "httpx_transport": ({BASE_HANDLER: "false"}, {"disable_aiohttp_transport": True}, {"drop_params": True}),
    "custom_prices": ({BASE_HANDLER: "false"}, {}, {"drop_params": True, **PRICES}),
    "shared_client": ({BASE_HANDLER: "false"}, {}, {"drop_params": True, "client": "shared"}),
    "base_handler": ({BASE_HANDLER: "true"}, {}, {"drop_params": True}),
    "base_handler_no_log": ({BASE_HANDLER: "true"}, {}, {"drop_params": True, "no-log": True}),
}


def base_arguments(url: str) -> dict:
    return {"api_base": url, "api_key": "bench", "timeout": 60.0, "max_retries": 0, "num_retries": 0}


def shared_client(url: str):
    """One OpenAI SDK client for every call, on litellm's own HTTP handler (aiohttp transport)."""
    import openai
    from litellm.llms.custom_httpx.http_handler import get_async_httpx_client

    handler = get_async_httpx_client(llm_provider="openai")
    return openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=60.0, http_client=handler.client)


def run_variant(url: str, name: str, n: int) -> dict:
    """One variant in this process: warm up, then CPU ms per call over n calls."""
    import litellm

    litellm.suppress_debug_info = True
    environment, settings, extra = VARIANTS[name]
    os.environ.update(environment)
    for key, value in settings.items():
        setattr(litellm, key, value)
    arguments = {**base_arguments(url), **extra}
    if arguments.get("client") == "shared":
        arguments["client"] = shared_client(url)

    async def ask_all(count: int, offset: int) -> float:
        slots = asyncio.Semaphore(CONCURRENCY)
        costs = []

        async def ask(i: int) -> None:
            async with slots:
                response = await litellm.acompletion(
                    model="openai/gpt-4o",
                    messages=[
                        {"role": "user", "content": f"Write a hard question about: document {i} on renal dosing"}
                    ],
                    **arguments,
                )
                assert response.choices[0].message.content
                costs.append((response._hidden_params or {}).get("response_cost"))

        await asyncio.gather(*(ask(offset + i) for i in range(count)))
        return sum(cost or 0.0 for cost in costs)

    async def main() -> dict:
        await ask_all(WARM_UP, 0)
        cpu, wall = time.process_time(), time.perf_counter()
        cost = await ask_all(n, WARM_UP)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {"cpu_ms_per_call": 1000 * cpu / n, "calls_per_s": n / wall, "litellm_cost": cost}

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", nargs=2, metavar=("URL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_variant(args.one[0], args.one[1], args.n)), flush=True)
        return
    from rare.testing.openai_server import ServerConfig, serve_process

    names = args.variants.split(",")
    results: dict[str, list[dict]] = {name: [] for name in names}
    with serve_process(ServerConfig(latency_s=0.05)) as server:
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                command = [sys.executable, __file__, "--n", str(args.n), "--one", server.url, name]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                results[name].append(json.loads(out.strip().splitlines()[-1]))
                print(f"  repeat {repeat + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    base = statistics.median(r["cpu_ms_per_call"] for r in results.get("rare_before", results[names[0]]))
    print(
        f"litellm client CPU per call, {args.n} calls, {CONCURRENCY} in flight, median of {args.repeats}, load {load:.1f}"
    )
    print(f"{'variant':<18}{'cpu ms/call':>12}{'vs before':>10}{'runs':>24}{'calls/s':>9}{'cost $':>10}")
    for name in names:
        cpus = [r["cpu_ms_per_call"] for r in results[name]]
        median = statistics.median(cpus)
        runs = "/".join(f"{c:.2f}" for c in cpus)
        rate = statistics.median(r["calls_per_s"] for r in results[name])
        cost = results[name][-1]["litellm_cost"]
        print(f"{name:<18}{median:>12.2f}{base / median:>9.2f}x{runs:>24}{rate:>9.0f}{cost:>10.4f}")


if __name__ == "__main__":
    main()
