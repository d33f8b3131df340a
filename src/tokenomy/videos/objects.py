"""A video job as OpenAI's ``video`` object, with tokenomy's queue fields added.

Added fields (documented in the README): ``queue_position`` (1 starts next) and
``eta_seconds`` (expected seconds until the video is ready) while it waits or renders,
``queue_wait_seconds`` (expected seconds until it starts) while it waits, and ``cost``
(the amount held, or charged once completed, as a decimal string) with ``currency``.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenomy.billing.call_pricing import units

#: Our statuses that OpenAI's object shows as another ("cancelled" is not one of its own).
_SHOWN = {"cancelled": "failed"}


def video_object(
    row: dict[str, Any], slot: tuple[int, float, float] | None = None
) -> dict[str, Any]:
    """``slot`` is (position, seconds until start, seconds until ready) when known."""
    status = row["status"]
    completed = row["completed_ms"]
    error = orjson.loads(row["error"]) if row["error"] else None
    if status == "cancelled" and error is None:
        error = {"code": "cancelled", "message": "The job was cancelled before it started."}
    obj: dict[str, Any] = {
        "id": row["id"],
        "object": "video",
        "model": row["model"],
        "status": _SHOWN.get(status, status),
        "progress": 100 if status == "completed" else int(row["progress"] or 0),
        "created_at": row["created_ms"] // 1000,
        "completed_at": completed // 1000 if completed and status == "completed" else None,
        "expires_at": row["expires_at"],
        "prompt": row["prompt"],
        "seconds": str(row["seconds"]),
        "size": row["size"],
        "remixed_from_video_id": None,
        "error": error,
        "cost": units(row["cost_nanos"] if status == "completed" else row["held_nanos"]),
        "currency": row["currency"],
    }
    if slot is not None:
        position, wait_s, eta_s = slot
        if status == "queued":
            obj["queue_position"] = position
            obj["queue_wait_seconds"] = round(max(wait_s, 0.0), 3)
        obj["eta_seconds"] = round(max(eta_s, 0.0), 3)
    return obj
