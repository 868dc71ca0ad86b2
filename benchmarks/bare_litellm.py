"""The machine's ceiling through litellm: bare `litellm.acompletion` calls, nothing else.

One process of this script sends one call per document of CORPUS to URL, 128 at a time,
with litellm's default (aiohttp) transport, as rare does, but with no cache, retries,
journal or parsing. It imports litellm and warms up first, prints "ready", waits for a line
on stdin (so several processes start together) and prints its calls/s and CPU ms per call.

Usage: python benchmarks/bare_litellm.py URL CORPUS   (llm_throughput.py runs two at once)
"""

import asyncio
import json
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-table download at import

import litellm  # noqa: E402

CONCURRENCY = 128
WARM_UP = 100


async def ask_all(url: str, texts: list[str]) -> None:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def ask(text: str) -> None:
        async with slots:
            response = await litellm.acompletion(
                model="openai/gpt-4o",
                messages=[{"role": "user", "content": "Write a hard question about: " + text}],
                api_base=url,
                api_key="bench",
                max_retries=0,
            )
            assert response.choices[0].message.content

    await asyncio.gather(*(ask(text) for text in texts))


def main() -> None:
    url, corpus = sys.argv[1], sys.argv[2]
    texts = [json.loads(line)["text"] for line in open(corpus)]
    asyncio.run(ask_all(url, texts[:WARM_UP]))
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = time.time(), time.process_time()
    asyncio.run(ask_all(url, texts))
    wall, cpu = time.time() - started, time.process_time() - cpu
    print(
        json.dumps({"calls_per_s": len(texts) / wall, "cpu_ms_per_call": 1000 * cpu / len(texts), "wall_s": wall}),
        flush=True,
    )


if __name__ == "__main__":
    main()
