"""The LLM client layer: every call of rare goes through `rare.llm.client.LLMClient` on litellm.

litellm is imported on first use, not with rare: importing it costs seconds of CPU
(thousands of pydantic models; `benchmarks/startup_costs.py` measures it), and a run whose answers all come from the response cache
never needs it. Modules take it as `from rare.llm import litellm`; its first attribute imports it.
"""

import importlib
import logging
import os
from types import ModuleType

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch prices at import

# litellm logs a line per call at INFO; rare reports usage itself, so keep its loggers quiet.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def load_litellm() -> ModuleType:
    """The litellm module, imported now if it is not yet (the import lock makes this thread-safe)."""
    module = importlib.import_module("litellm")
    module.suppress_debug_info = True
    return module


class _ImportedOnFirstUse:
    """Stands for the litellm module: any attribute is the real module's, imported at the first one."""

    def __getattr__(self, name: str):
        return getattr(load_litellm(), name)

    def __repr__(self) -> str:
        return "<litellm, imported on first use>"


litellm = _ImportedOnFirstUse()
