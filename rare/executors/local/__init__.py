"""The default executor: asyncio in this process, or a pool of worker processes for a big step."""
