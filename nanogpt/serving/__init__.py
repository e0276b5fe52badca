"""Serving: continuous batching on the engine and the OpenAI-compatible HTTP server."""
