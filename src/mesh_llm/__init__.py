"""mesh-llm: pool the GPUs and CPUs of several machines into one OpenAI-compatible LLM service."""

__version__ = "0.1.0"
