"""litellm's per-call success logging: skipped while no callback listens, kept for a registered one."""

import asyncio
import gc

import litellm
from conftest import compose_config, server_overrides
from hydra.utils import instantiate
from litellm.integrations.custom_logger import CustomLogger
from litellm.litellm_core_utils.litellm_logging import Logging

from rare.llm.call_logging import CALLBACK_LISTS
from rare.llm.run_scope import start_run


class CountingLogger(CustomLogger):
    def __init__(self):
        super().__init__()
        self.successes = 0

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.successes += 1


def client(tmp_path, server):
    start_run()
    cfg = compose_config(tmp_path, *server_overrides(server), "llm.cache=false")
    return instantiate(cfg.llm, _convert_="all")


def live_logging_objects() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Logging))


def test_calls_keep_no_logging_state_while_no_callback_is_registered(tmp_path, server):
    llm = client(tmp_path, server)

    async def ask() -> int:
        await asyncio.gather(*(llm.complete([{"role": "user", "content": f"question {n}"}]) for n in range(20)))
        return live_logging_objects()  # before litellm's logging worker had a turn in this loop

    before = live_logging_objects()  # an earlier test's failed call may still hold one
    assert asyncio.run(ask()) <= before


def test_a_registered_callback_still_sees_every_call(tmp_path, server):
    llm, logger = client(tmp_path, server), CountingLogger()
    before = live_logging_objects()
    litellm.callbacks.append(logger)
    try:

        async def ask() -> tuple[int, int]:
            await asyncio.gather(*(llm.complete([{"role": "user", "content": f"question {n}"}]) for n in range(5)))
            alive = live_logging_objects() - before
            await litellm.litellm_core_utils.logging_worker.GLOBAL_LOGGING_WORKER.flush()
            return alive, logger.successes

        alive, successes = asyncio.run(ask())
    finally:  # litellm copies a callback into its other lists at the first call
        for name in CALLBACK_LISTS:
            while logger in getattr(litellm, name):
                getattr(litellm, name).remove(logger)
    assert alive > 0  # the check above can see litellm's logging state
    assert successes == 5
