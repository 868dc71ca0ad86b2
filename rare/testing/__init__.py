"""The OpenAI-compatible test server the tests and benchmarks talk to on 127.0.0.1: latency, faults, rate limits, batches."""
