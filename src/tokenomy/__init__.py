"""tokenomy: an OpenAI- and Anthropic-compatible gateway that meters, bills and routes tokens."""

__version__ = "0.1.0"
