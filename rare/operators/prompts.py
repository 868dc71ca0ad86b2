"""Prompt templates from `conf/prompts/*.yaml`: a system and a user message rendered with Jinja2."""

from dataclasses import dataclass
from functools import lru_cache

import jinja2
from jinja2 import meta

from rare.errors import ConfigError

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


@lru_cache(maxsize=256)
def _compiled(source: str) -> jinja2.Template:
    """Jinja compiles a template to Python code: once per text, not once per row."""
    return _ENV.from_string(source)


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt; `{{ name }}` placeholders are filled from the row (values are never re-parsed)."""

    system: str
    user: str

    def variables(self) -> set[str]:
        """Names the template uses, for checking them before any call is made."""
        names: set[str] = set()
        for part in (self.system, self.user):
            names |= meta.find_undeclared_variables(_ENV.parse(part))
        return names

    def render(self, **values) -> list[dict]:
        try:
            return [
                {"role": "system", "content": _compiled(self.system).render(**values).strip()},
                {"role": "user", "content": _compiled(self.user).render(**values).strip()},
            ]
        except jinja2.UndefinedError as error:
            raise ConfigError(f"prompt template uses an unknown variable: {error.message}") from error


def as_template(prompt, expected: set[str], owner: str) -> PromptTemplate:
    """Build a template from config and refuse placeholders the operator cannot fill."""
    if isinstance(prompt, PromptTemplate):
        template = prompt
    else:
        try:
            template = PromptTemplate(system=prompt["system"], user=prompt["user"])
        except (KeyError, TypeError) as error:
            raise ConfigError(
                f"{owner}: the prompt must be a mapping with 'system' and 'user' texts, got {prompt!r}"
            ) from error
    try:
        unknown = template.variables() - expected
    except jinja2.TemplateSyntaxError as error:
        raise ConfigError(f"{owner}: prompt template syntax error: {error}") from error
    if unknown:
        raise ConfigError(f"{owner}: prompt uses {sorted(unknown)}, but only {sorted(expected)} are available")
    return template
