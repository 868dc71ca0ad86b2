"""The usage of a step whose calls ran in many Ray actors: each actor's newest snapshot, merged."""


def keep_latest(latest: dict[str, dict], actor: str, usage: dict) -> None:
    """Keep an actor's newest usage snapshot. Its replies may arrive out of order, and its counters
    only grow, so the newest snapshot is the largest."""

    def size(snapshot: dict) -> tuple:
        return tuple(
            snapshot.get(key, 0) for key in ("calls", "cached_calls", "retries", "prompt_tokens", "completion_tokens")
        )

    if actor not in latest or size(usage) >= size(latest[actor]):
        latest[actor] = usage
