"""Generation: the KV cache, sampling, the engine that runs prefill and decode, and completion text."""
