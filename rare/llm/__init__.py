"""The LLM client layer: every call of rare goes through `rare.llm.client.LLMClient` on litellm."""

import logging

# litellm logs a line per call at INFO; rare reports usage itself, so keep its loggers quiet.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
    logging.getLogger(_name).setLevel(logging.WARNING)
