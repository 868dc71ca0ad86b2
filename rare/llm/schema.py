"""An LLM step's answer schema, written once: the JSON shape its prompt shows the model is read
from it (`json_shape`), and what goes to the provider is the schema without the prompt's wording
(`wire_schema`)."""

from collections.abc import Mapping

# What a value of each JSON type is called in a shape: `{"agrees": boolean, "rationale": string}`
TYPE_WORDS = {"string": "string", "boolean": "boolean", "integer": "integer", "number": "number", "null": "null"}


def json_shape(schema: Mapping) -> str:
    """The compact shape of `schema` as a prompt shows it, e.g. `{"answering": [document numbers]}`.

    An object lists its properties in order, an array its item once, a leaf its type; a leaf's
    `description` replaces its type word (`"items": {"type": "integer", "description": "document
    numbers"}` is shown as `[document numbers]`). Bounds (lengths, item counts) are not shown.
    """
    if "description" in schema and schema.get("type") not in ("object", "array"):
        return str(schema["description"])
    kind = schema.get("type")
    if kind == "object":
        fields = ", ".join(f'"{name}": {json_shape(value)}' for name, value in (schema.get("properties") or {}).items())
        return "{" + fields + "}"
    if kind == "array":
        return "[" + json_shape(schema.get("items") or {}) + "]"
    if isinstance(kind, str) and kind in TYPE_WORDS:
        return TYPE_WORDS[kind]
    raise ValueError(f"json_shape: a schema node needs a JSON type or a description, got {dict(schema)!r}")


def wire_schema(schema):
    """`schema` as sent to the provider: without the `description`s that only word the prompt's shape."""
    if isinstance(schema, Mapping):
        return {
            key: wire_schema(value)
            for key, value in schema.items()
            if key != "description" or not isinstance(value, str)
        }
    if isinstance(schema, list):
        return [wire_schema(value) for value in schema]
    return schema
