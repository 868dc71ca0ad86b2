"""Row steps on a Ray cluster: Ray Data actors, one shared rate limit and budget, crash handlers kept."""
