"""Reading input rows: documents (json, jsonl, parquet, csv, a folder) and labelled questions."""
