"""tokenomy: one OpenAI- and Anthropic-compatible endpoint that meters, bills and routes LLM tokens."""

__version__ = "0.1.0"
