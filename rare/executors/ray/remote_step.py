"""A streamed row step on Ray: the driver's stream sends each row's `process` to the step's actors.

The stream (`rare.pipeline.stream`) stays in the driver and journals every outcome through the
step's `StepRun` as it comes back, so resume at row level, failed.jsonl, dropped.jsonl and the
step files are the local path's. Only the calls leave: a `RemoteRowStep` stands in for the step's
`process`, puts the rows asked in the same turn of the event loop into actor calls of up to
CALL_ROWS rows, and sends each to the actor with the fewest rows outstanding. Each row step has a pool
of `RowStepActor`s of its own (its client, concurrency, breaker); all share the run's `RunLimits`.
"""

import asyncio
import json
import pickle

import ray

from rare.errors import RunAborted
from rare.executors.ray.usage_snapshots import keep_latest
from rare.llm.usage import merge_usage
from rare.pipeline.step_contract import RowOperator
from rare.storage.formats import dumps

CALL_ROWS = 8  # rows per actor call at most: a call answers when its slowest row does, so calls stay small;
# the driver spends ~0.6 ms of CPU per call, ~0.1 ms per row at 8 (benchmarks/ray_call_cost.py)


class RemoteRowStep:
    """What the stream runs for row step `op`: `process(row)`, answered by one of `actors`.

    `concurrency` is the rows the whole pool works on at once (`per_actor` each).
    """

    def __init__(self, op: RowOperator, actors: list, per_actor: int, batch_size: int):
        self.op = op
        self.actors = actors
        self.concurrency = per_actor * len(actors)
        self.batch_size = max(1, min(batch_size, CALL_ROWS))
        self._outstanding = [0] * len(actors)  # rows sent to each actor and not answered yet
        self._latest: dict[str, dict] = {}  # each actor's newest usage snapshot
        self._queue: asyncio.Queue | None = None
        self._sender: asyncio.Task | None = None
        self._replies: set[asyncio.Task] = set()

    async def process(self, row: dict) -> dict | list[dict]:
        if self._sender is None:  # started on the stream's own event loop
            self._queue = asyncio.Queue()
            self._sender = asyncio.create_task(self._send())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((row, future))
        return await future

    def usage(self) -> dict:
        """Tokens and cost of the step's calls, in every actor, as last reported."""
        return merge_usage(list(self._latest.values()))

    async def _send(self) -> None:
        while True:
            asked = [await self._queue.get()]
            await asyncio.sleep(0)  # let the rows asked in this turn of the loop join the same call
            while len(asked) < self.batch_size and not self._queue.empty():
                asked.append(self._queue.get_nowait())
            asked = [(row, future) for row, future in asked if not future.done()]  # done: cancelled meanwhile
            if not asked:
                continue
            slot = min(range(len(self.actors)), key=self._outstanding.__getitem__)
            self._outstanding[slot] += len(asked)
            reply = self.actors[slot].answer_with_usage.remote([dumps(row) for row, _ in asked])
            task = asyncio.create_task(self._settle(slot, reply, asked))
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)

    async def _settle(self, slot: int, reply, asked: list[tuple[dict, asyncio.Future]]) -> None:
        try:
            outcomes, usage = await reply
        except Exception as error:  # the actor is gone (killed, out of memory): not the rows' fault
            stop = RunAborted(f"step '{self.op.name}': a Ray actor stopped answering: {error}")
            outcomes, usage = [(None, None, pickle.dumps(stop))] * len(asked), None
        finally:
            self._outstanding[slot] -= len(asked)
        if usage is not None:
            keep_latest(self._latest, str(slot), json.loads(usage))
        for (_, future), (fields, error, fatal) in zip(asked, outcomes):
            if future.done():
                continue
            if fatal is not None:
                future.set_exception(pickle.loads(fatal))
            elif error is not None:
                future.set_exception(pickle.loads(error))
            else:
                future.set_result(json.loads(fields))

    def stop(self) -> None:
        """Write the actors' cached answers, then end them (rows still in flight are lost, as on Ctrl-C)."""
        try:
            ray.get([actor.flush.remote() for actor in self.actors], timeout=30)
        except Exception:  # an actor already gone has nothing left to write
            pass
        for actor in self.actors:
            ray.kill(actor)
