"""Reading vendors' usage objects: every dialect's fields, and malformed ones."""

from __future__ import annotations

from typing import Any

import pytest

from tokenomy.core.usage import Usage


@pytest.mark.parametrize(
    ("u", "want"),
    [
        ({"prompt_tokens": 24, "completion_tokens": 12}, Usage(24, 0, 0, 12, 0)),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "prompt_tokens_details": {"cached_tokens": 30},
                "completion_tokens_details": {"reasoning_tokens": 20},
            },
            Usage(100, 30, 0, 50, 20),
        ),
        # DeepSeek's own field, and Kimi's top-level one: the largest report wins.
        ({"prompt_tokens": 100, "prompt_cache_hit_tokens": 40}, Usage(100, 40, 0, 0, 0)),
        (
            {
                "prompt_tokens": 100,
                "cached_tokens": 45,
                "prompt_tokens_details": {"cached_tokens": 9},
            },
            Usage(100, 45, 0, 0, 0),
        ),
        # Counts that cannot be: clamped to what was reported.
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_cache_hit_tokens": 99,
                "completion_tokens_details": {"reasoning_tokens": 7},
            },
            Usage(10, 10, 0, 5, 5),
        ),
        # Missing, null, negative, boolean, string or float fields.
        ({}, Usage()),
        (
            {"prompt_tokens": None, "completion_tokens": -3, "cached_tokens": True},
            Usage(0, 0, 0, 0, 0),
        ),
        ({"prompt_tokens": "12", "completion_tokens": 7.9}, Usage(0, 0, 0, 7, 0)),
        (
            {"prompt_tokens": 5, "prompt_tokens_details": [], "completion_tokens_details": 0},
            Usage(5, 0, 0, 0, 0),
        ),
    ],
)
def test_openai_usage(u: dict[str, Any], want: Usage) -> None:
    assert Usage.from_openai(u) == want
