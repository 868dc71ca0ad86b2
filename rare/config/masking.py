"""Keys never reach the run dir: config values and overrides that hold secrets are masked."""

import re

SECRET_KEY = re.compile(r"(api_key|apikey|token|secret|password)$", re.IGNORECASE)
MASK = "***"


def redact(node):
    """A copy of a plain config container with every secret-named value masked."""
    if isinstance(node, dict):
        return {
            key: (MASK if SECRET_KEY.search(str(key)) and value not in (None, "") else redact(value))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [redact(value) for value in node]
    return node


def redact_override(override: str) -> str:
    """`llm.api_key=sk-...` -> `llm.api_key=***`."""
    key, sep, value = override.partition("=")
    if sep and SECRET_KEY.search(key.lstrip("+~").strip()):
        return f"{key}={MASK}"
    return override
