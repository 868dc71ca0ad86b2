"""One model answer (text, why it stopped, tokens, cost) and what the response cache keeps of it."""

from dataclasses import dataclass


@dataclass
class Completion:
    """One model answer with what it cost."""

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


def stored_answer(completion: Completion, cap: int | None) -> dict:
    """What the response cache keeps of an answer, with the cap it was asked under."""
    return {
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "cost_usd": completion.cost_usd,
        "max_tokens": cap,
    }


def replayed(stored: dict) -> Completion:
    """A cached answer as a completion: its tokens are its own, it costs nothing now."""
    return Completion(
        text=stored["text"],
        finish_reason=stored.get("finish_reason"),
        prompt_tokens=int(stored.get("prompt_tokens", 0)),
        completion_tokens=int(stored.get("completion_tokens", 0)),
        cost_usd=0.0,
    )


def answer_text(message, plain_text: bool) -> str:
    """The answer's text. For a plain-text request, thinking that litellm or the server split off
    into `reasoning_content` (a `<think>` block, a reasoning parser) is put back in front as
    `<think>...</think>`: the whole text is what a reasoning trace is distilled from."""
    get = message.get if isinstance(message, dict) else lambda name: getattr(message, name, None)
    content = get("content") or ""
    thinking = get("reasoning_content") if plain_text else None
    if isinstance(thinking, str) and thinking.strip() and "<think>" not in content:
        return f"<think>\n{thinking.strip()}\n</think>\n{content.lstrip()}"
    return content


def batch_answer(body: dict) -> Completion:
    """A batch result line's answer, unpriced: the server's text as it is (batch requests ask for JSON)."""
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    return Completion(
        answer_text(choice.get("message") or {}, plain_text=False),
        choice.get("finish_reason"),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )
