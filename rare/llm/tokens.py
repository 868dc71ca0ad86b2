"""A model's tokens, for fitting documents to its context: the embedded model's own vocabulary,
else litellm's tokenizer for the model name.

litellm falls back to a GPT tokenizer for names it does not know, which undercounts a small
model's tokens (SmolLM2's vocabulary makes more tokens of technical text than tiktoken's
cl100k), so a budget computed with it overflows the embedded server's context and answers stop
short of their cap. The embedded model's GGUF file carries its vocabulary: load only that.
"""

from __future__ import annotations

import atexit
import functools
from pathlib import Path

from rare.llm import litellm  # imported on first use


class LitellmTokenizer:
    """litellm's tokenizer for a model name; `encode` is None when it has none."""

    def __init__(self, model: str):
        self.model = model
        self.name = model

    def encode(self, text: str) -> list[int] | None:
        try:
            return list(litellm.encode(model=self.model, text=text))
        except Exception:  # no tokenizer for this model: the caller estimates
            return None

    def decode(self, tokens: list[int]) -> str:
        return litellm.decode(model=self.model, tokens=tokens)


class GGUFTokenizer:
    """The vocabulary of a GGUF model file, loaded without its weights, on first use (`benchmarks/startup_costs.py`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = f"gguf:{self.path.name}:{self.path.stat().st_size}"
        self._vocab = None

    def encode(self, text: str) -> list[int]:
        return list(self._loaded().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def decode(self, tokens: list[int]) -> str:
        return self._loaded().detokenize(tokens).decode("utf-8", errors="ignore")  # a cut may split a character

    def _loaded(self):
        if self._vocab is None:
            import llama_cpp
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):  # llama.cpp warns that a vocabulary has no context size
                self._vocab = llama_cpp.Llama(model_path=str(self.path), vocab_only=True, verbose=False)
            atexit.register(self._vocab.close)  # freed at interpreter teardown, llama.cpp's bindings are gone
        return self._vocab


@functools.cache
def _gguf_tokenizer(path: Path) -> GGUFTokenizer:
    return GGUFTokenizer(path)


def tokenizer_for(model: str, server=None) -> LitellmTokenizer | GGUFTokenizer:
    """The tokenizer of the model a client talks to: the embedded server's file, else the model name's."""
    path = getattr(server, "model_path", None)
    return _gguf_tokenizer(Path(path)) if path is not None else LitellmTokenizer(model)


def cut_to_tokens(tokenizer: LitellmTokenizer | GGUFTokenizer, text: str, budget: int) -> str | None:
    """`text` cut to its first `budget` tokens, or None when it already fits."""
    if len(text.encode("utf-8")) <= budget:  # a token is at least one byte: surely fits, no need to count
        return None
    tokens = tokenizer.encode(text)
    if tokens is None:
        return None if len(text) <= budget * 4 else text[: budget * 4]  # about four characters per token
    if len(tokens) <= budget:
        return None
    return tokenizer.decode(tokens[:budget]).rstrip("\ufffd")  # no half character at the cut
