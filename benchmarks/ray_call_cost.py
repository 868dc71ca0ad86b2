"""The driver's CPU per actor call on Ray, as a streamed step sends them (`rare.executors.ray.remote_step`).

A streamed row step sends its rows to its actors in calls of up to CALL_ROWS rows, awaited from
the stream's event loop. This measures the CPU the driver spends per call and per row (the
actor answers at once, with rows of ~1,000 characters), for calls of 1 row and of CALL_ROWS rows,
and prints it beside litellm's client CPU per call (~3.5 ms, spent in the actor, not the driver).

Usage: python benchmarks/ray_call_cost.py [--calls 1000]
"""

import argparse
import asyncio
import json
import resource

import ray

from rare.executors.ray.remote_step import CALL_ROWS


@ray.remote(num_cpus=1)
class Echo:
    async def answer_with_usage(self, texts: list[str]) -> tuple[list[tuple], str]:
        return [(text, None, None) for text in texts], json.dumps({"calls": len(texts)})


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def send(actor, rows: list[str], calls: int, in_flight: int) -> None:
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            _, usage = await actor.answer_with_usage.remote(rows)
            json.loads(usage)

    await asyncio.gather(*(one() for _ in range(calls)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="warning")
    try:
        actor = Echo.remote()
        ray.get(actor.answer_with_usage.remote(["warm up"]))
        print(f"{'rows per call':>14}{'ms CPU / call':>16}{'ms CPU / row':>15}")
        for width in (1, CALL_ROWS):
            rows = [json.dumps({"id": f"d{i}", "text": "word " * 200}) for i in range(width)]
            started = cpu_s()
            asyncio.run(send(actor, rows, args.calls, in_flight=8))
            per_call = 1000 * (cpu_s() - started) / args.calls
            print(f"{width:>14}{per_call:>16.2f}{per_call / width:>15.3f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
