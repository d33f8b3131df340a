"""Batches as OpenAI's API shows them, and the lines of their result files."""

from __future__ import annotations

import json
from typing import Any

from tokenomy.core.ids import UniqueIds

#: The endpoints a batch may target, and the call each line becomes.
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")

#: The endpoint of Anthropic's Message Batches' lines.
MESSAGES = "/v1/messages"

#: OpenAI accepts only this completion window.
WINDOWS = {"24h": 24 * 3600}

_BATCH_IDS = UniqueIds("batch_", width=8)

_STAMPS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def new_batch_id() -> str:
    return _BATCH_IDS.next()


def line_request_id(batch_id: str, line_no: int) -> str:
    """The usage record id of a line's outcome: the same however often it is run."""
    return f"batch_req_{batch_id.removeprefix('batch_')}_{line_no}"


def batch_object(row: dict[str, Any], completed: int, failed: int) -> dict[str, Any]:
    """A batch row as OpenAI's ``Batch``."""
    errors = json.loads(row["errors"]) if row.get("errors") else None
    obj: dict[str, Any] = {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row.get("output_file_id"),
        "error_file_id": row.get("error_file_id"),
    }
    for name in _STAMPS:
        obj[name] = row.get(name)
    obj["request_counts"] = {"total": row["total"], "completed": completed, "failed": failed}
    obj["metadata"] = json.loads(row["metadata"]) if row.get("metadata") else None
    obj[EXTRA] = extra_fields(row)
    return obj


#: The key under which a batch object carries tokenomy's own fields (OpenAI's and
#: Anthropic's SDKs keep unknown fields: ``batch.model_extra["tokenomy"]``).
EXTRA = "tokenomy"


def extra_fields(row: dict[str, Any]) -> dict[str, Any]:
    """tokenomy's fields of a batch: its plan (when and where it runs, what it should
    cost and save) and the vendor batch its lines were handed to, if any."""
    out: dict[str, Any] = {"plan": json.loads(row["plan"]) if row.get("plan") else None}
    if row.get("vendor_batch"):
        vb = json.loads(row["vendor_batch"])
        out["vendor_batch"] = {k: vb.get(k) for k in ("vendor", "deployment", "id", "status")}
    return out


def result_line(result: dict[str, Any]) -> bytes:
    """A result's line in the output or error file, in OpenAI's format."""
    body = json.loads(result["body"]) if result.get("body") else None
    line = {
        "id": result["request_id"],
        "custom_id": result["custom_id"],
        "response": {
            "status_code": result["status_code"],
            "request_id": result["request_id"],
            "body": body,
        },
        "error": None,
    }
    return json.dumps(line, separators=(",", ":")).encode()


_NEVER_RAN = {
    "cancelled": ("batch_cancelled", "This request was cancelled before it ran."),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
}


def unrun_line(line: dict[str, Any]) -> bytes:
    """The error-file line of a request cancelled or expired before it ran."""
    code, message = _NEVER_RAN[line["state"]]
    obj = {
        "id": line["request_id"],
        "custom_id": line["custom_id"],
        "response": None,
        "error": {"code": code, "message": message},
    }
    return json.dumps(obj, separators=(",", ":")).encode()
