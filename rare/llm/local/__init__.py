"""The embedded model: a llama.cpp server started and stopped by rare (`llm=local`)."""
