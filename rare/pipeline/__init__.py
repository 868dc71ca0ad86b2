"""The pipeline engine: the step contract, the graph, building steps, running them, seeding, the circuit breaker."""
