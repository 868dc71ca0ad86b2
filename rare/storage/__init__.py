"""Step files and journals: readers and writers per format, the append-only journal, one SQLite file shared by processes."""
