"""The fixed-answer upstream: nginx with a generated config, two ports, no Python.

nginx cannot branch on a request body cheaply, so one port answers every chat request
with a fixed ``chat.completion`` JSON and the other with a fixed SSE stream; each system
under test sends streaming requests to the second.
"""

from __future__ import annotations

from pathlib import Path

import orjson

CREATED = 1_700_000_000
WORDS = [
    "Hello",
    "!",
    " This",
    " is",
    " a",
    " fixed",
    " answer",
    " from",
    " the",
    " benchmark",
    " upstream",
    ".",
]
PROMPT_TOKENS = 24
#: nginx reads one config token into a 4 KiB buffer, so each fixed body must fit.
MAX_BODY = 4000


def json_body() -> bytes:
    """A non-streaming answer with usage, as OpenAI sends it."""
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": "bench-json",
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": len(WORDS),
                "total_tokens": PROMPT_TOKENS + len(WORDS),
            },
        }
    )


def _chunk(choices: list[object], usage: object = None) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "bench-sse",
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


def sse_body() -> bytes:
    """A stream: a role chunk, one chunk per word, a finish chunk, a usage chunk, [DONE]."""
    parts = [_chunk([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])]
    parts += [_chunk([{"index": 0, "delta": {"content": w}, "finish_reason": None}]) for w in WORDS]
    parts.append(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": len(WORDS),
        "total_tokens": PROMPT_TOKENS + len(WORDS),
    }
    parts.append(_chunk([], usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def _nginx_string(body: bytes) -> str:
    """``body`` as a single-quoted nginx string (``$`` would start a variable)."""
    text = body.decode()
    if len(body) > MAX_BODY or "$" in text:
        raise ValueError("fixed body too long or contains '$'")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_config(workdir: Path, json_port: int, sse_port: int) -> str:
    """A self-contained nginx config: one worker, no logs, temp files under ``workdir``."""
    temp = "\n".join(
        f"  {name}_temp_path {workdir / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
daemon off;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server {{
    listen 127.0.0.1:{json_port} reuseport backlog=4096;
    location = /v1/chat/completions {{
      default_type application/json;
      return 200 {_nginx_string(json_body())};
    }}
  }}
  server {{
    listen 127.0.0.1:{sse_port} reuseport backlog=4096;
    location = /v1/chat/completions {{
      default_type text/event-stream;
      add_header Cache-Control no-cache;
      return 200 {_nginx_string(sse_body())};
    }}
  }}
}}
"""
