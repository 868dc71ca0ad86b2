"""What reading the finished rows off the journals costs (`rare partial`, `rare view` on a running
run), beside what the run pays to write them, on final rows of long documents.

A final row holds its document, five hard negatives (~1,400 words each, Zipfian, as
`benchmarks/corpus.py` makes them) and the reasoning: ~50 KB of JSON. The script appends N such
rows to a step's journal over two worker shards, as the run does (`Journal.append`); writes each
line once more to a second file, flushed, as a `dataset.partial.jsonl` the run kept up to date
would (the line already encoded: only the write); then reads the journals back with the reader
(`finished_lines`, as `rare partial` does). It prints the CPU time per row of each: the copy is
paid by the run on every row, the reader only when someone asks, outside the run's process.

Usage: python benchmarks/partial_rows.py [N]   (default 1,000 rows)
"""

import sys
import tempfile
import time

from corpus import synthetic_rows

from rare.rundir.partial import finished_lines
from rare.storage.formats import dumps
from rare.storage.step_storage import StepStorage

NEGATIVES = 5


def final_rows(n: int):
    documents = [row["text"] for row in synthetic_rows(n + NEGATIVES, doc_len=1400)]
    for i, row in enumerate(synthetic_rows(n, seed=1, doc_len=300)):
        yield {
            "id": f"doc-{i:06d}",
            "text": documents[i],
            "question": row["question"],
            "hard_negatives": documents[i + 1 : i + 1 + NEGATIVES],
            "reasoning": row["text"],
        }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rows = list(final_rows(n))
    megabytes = sum(len(dumps(row)) + 1 for row in rows) / 1e6
    with tempfile.TemporaryDirectory() as folder:
        storage = StepStorage(folder, naming="step")
        storage.name_steps(["reason_distill"])
        shards = [storage.journal(1, shard) for shard in (0, 1)]
        started = time.process_time()
        for number, row in enumerate(rows):
            shards[number % 2].append(row)
        write_s = time.process_time() - started
        for shard in shards:
            shard.close()
        lines = [dumps(row) + "\n" for row in rows]
        with open(f"{folder}/dataset.partial.jsonl", "w", encoding="utf-8") as copy:
            started = time.process_time()
            for line in lines:
                copy.write(line)
                copy.flush()
            copy_s = time.process_time() - started
        started = time.process_time()
        read = sum(1 for _ in finished_lines(storage, 1))
        read_s = time.process_time() - started
    assert read == n, (read, n)
    print(f"{n} final rows, {megabytes:.0f} MB of JSONL over 2 shards")
    print(f"  the run, appending them to its journals:    {1e6 * write_s / n:8.1f} us CPU per row")
    print(f"  a second copy written by the run:           {1e6 * copy_s / n:8.1f} us CPU per row, on every row")
    print(f"  rare partial, reading every finished row:   {1e6 * read_s / n:8.1f} us CPU per row, per call")
    print(
        f"  the copy: +{copy_s / write_s:.0%} on the run's journal writes; one read of all rows: {read_s / write_s:.2f}x them"
    )


if __name__ == "__main__":
    main()
