"""The steps: one class per file, each a row step (`process(row)`) or a corpus step (`prepare` + `process_batch`)."""
