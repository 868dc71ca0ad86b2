"""The actor of a row step: each holds a copy of the step and runs `process` with asyncio.

It is the Ray Data UDF of a step run alone (`__call__` on a batch), and a plain Ray actor of a
streamed step (`answer_with_usage` on the rows the driver sends it, `rare.executors.ray.remote_step`).

Rows travel as JSON text (so no value changes type on the way through Arrow) and come back
with their outcome: the new fields, or the pickled exception, which the runner records (a row
error) or raises (a run-stopping error) as it would locally.
"""

import asyncio
import json
import pickle
import uuid

import pyarrow as pa

from rare.errors import RowError, RunAborted
from rare.executors.ray.limits import ClusterLimiter, SpendCounter
from rare.llm.budget import use_counter
from rare.llm.rate_limit import use_limiter
from rare.pipeline.step_contract import RowOperator
from rare.pipeline.step_run import _reason

OUTCOME_SCHEMA = pa.schema(
    [
        ("row", pa.string()),  # the input row, as sent
        ("fields", pa.string()),  # JSON of what `process` returned; null on error
        ("error", pa.binary()),  # the pickled row error; null on success
        ("fatal", pa.binary()),  # the pickled RunAborted (budget reached, provider refusing): the run must stop
        ("usage", pa.string()),  # the actor's usage so far (first row of a batch only)
        ("actor", pa.string()),  # which actor answered, to merge usage snapshots
    ]
)


def _pickled(error: Exception, stand_in: type[Exception]) -> bytes:
    """The error itself when it survives pickling, else a `stand_in` with the same message."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
        return data
    except Exception:
        return pickle.dumps(stand_in(_reason(error)))


class RowStepActor:
    """One actor of the pool: `op` runs here with up to `concurrency` rows in flight.

    Its clients join the run-wide budget and, where rpm/tpm ceilings are set, the run-wide
    rate limiters held by `limits` (a `RunLimits` actor).
    """

    def __init__(self, op: RowOperator, limits, concurrency: int):
        self.op = op
        self.concurrency = concurrency
        self.actor_id = uuid.uuid4().hex
        self._slots: asyncio.Semaphore | None = None
        use_counter(SpendCounter(limits))
        for client in op.clients():
            if client.rpm or client.tpm:
                key = (client.model, client.endpoint(), client.rpm, client.tpm, client.tpm_counts)
                use_limiter(*key, ClusterLimiter(limits, key))

    async def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("row").to_pylist()
        outcomes = await self.answer(texts)
        self.flush()
        fields, errors, fatal = (list(column) for column in zip(*outcomes))
        usage = [json.dumps(self.op.usage())] + [None] * (len(texts) - 1)
        columns = [texts, fields, errors, fatal, usage, [self.actor_id] * len(texts)]
        return pa.Table.from_arrays(
            [pa.array(c, t.type) for c, t in zip(columns, OUTCOME_SCHEMA)], schema=OUTCOME_SCHEMA
        )

    async def answer(self, texts: list[str]) -> list[tuple[str | None, bytes | None, bytes | None]]:
        """The outcome of each row (JSON text): its fields as JSON, or its pickled row or run-stopping error."""
        if self._slots is None:  # created on the actor's own event loop
            self._slots = asyncio.Semaphore(self.concurrency)
        return await asyncio.gather(*(self._one(json.loads(text)) for text in texts))

    async def answer_with_usage(self, texts: list[str]) -> tuple[list[tuple], str]:
        """`answer`, and this actor's usage so far (JSON): what a streamed step's actor replies."""
        outcomes = await self.answer(texts)
        return outcomes, json.dumps(self.op.usage())

    def flush(self) -> None:
        """Write the answers the response cache keeps in memory."""
        for client in self.op.clients():
            client.flush()

    async def _one(self, row: dict) -> tuple[str | None, bytes | None, bytes | None]:
        async with self._slots:
            try:
                return json.dumps(await self.op.process(row), ensure_ascii=False), None, None
            except RunAborted as error:
                return None, None, _pickled(error, RunAborted)
            except Exception as error:
                return None, _pickled(error, RowError), None
