"""A run dir: its manifest, reading back what it holds, the end-of-run summary, and resuming it."""
