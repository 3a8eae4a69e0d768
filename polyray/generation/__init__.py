"""The generation service: OpenAI-compatible completions and chat over vLLM from the base model and
every adapter version of a run (``api``: settings and request bodies; ``catalog``: model ids and
adapter versions; ``deployment``: the Ray Serve deployment)."""
