"""Every random choice is seeded from (run seed, step, row id), so reruns repeat exactly."""

import hashlib
import random


def derive_seed(run_seed: int, step: str, row_id: str) -> int:
    """A 64-bit seed that depends only on its three parts, never on order or time."""
    digest = hashlib.sha256(f"{run_seed}\x00{step}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def row_rng(run_seed: int, step: str, row_id: str) -> random.Random:
    return random.Random(derive_seed(run_seed, step, row_id))
