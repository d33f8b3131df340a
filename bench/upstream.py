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


#: Content events of the long stream (the ``stream2k`` workload): 2,000 events in all.
LONG_EVENTS = 2000


def long_sse_body() -> bytes:
    """A long answer: a role chunk, ``LONG_EVENTS - 4`` content chunks, a finish chunk, a
    usage chunk and [DONE] (2,000 events). Served from a file: too long for a config."""
    content = LONG_EVENTS - 4
    parts = [_chunk([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])]
    parts += [
        _chunk([{"index": 0, "delta": {"content": WORDS[i % len(WORDS)]}, "finish_reason": None}])
        for i in range(content)
    ]
    parts.append(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": content,
        "total_tokens": PROMPT_TOKENS + content,
    }
    parts.append(_chunk([], usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts).replace(b'"model":"bench-sse"', b'"model":"bench-long"')


def _nginx_string(body: bytes) -> str:
    """``body`` as a single-quoted nginx string (``$`` would start a variable)."""
    text = body.decode()
    if len(body) > MAX_BODY or "$" in text:
        raise ValueError("fixed body too long or contains '$'")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_config(workdir: Path, json_port: int, sse_port: int, long_port: int) -> str:
    """A self-contained nginx config: one worker, no logs, temp files under ``workdir``.

    The long stream is a file: nginx serves files to GET only, so a POST is answered 405
    and that error's page, with status 200, is the file (an internal redirect, as GET)."""
    # nginx's workers may run as another user: they may pass through the (private) work
    # dir and read this one directory, nothing else.
    static = workdir / "static"
    static.mkdir(exist_ok=True)
    (static / "long-stream.sse").write_bytes(long_sse_body())
    (static / "long-stream.sse").chmod(0o644)
    static.chmod(0o755)
    workdir.chmod(0o711)
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
  server {{
    listen 127.0.0.1:{long_port} reuseport backlog=4096;
    root {static};
    default_type text/event-stream;
    location = /v1/chat/completions {{
      error_page 405 =200 /long-stream.sse;
      return 405;
    }}
    location = /long-stream.sse {{
      internal;
      add_header Cache-Control no-cache;
    }}
  }}
}}
"""
