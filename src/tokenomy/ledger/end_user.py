"""The organisation's end user a call was made for, as the client named it.

OpenAI's dialect names them in ``safety_identifier`` (or the older ``user``), Anthropic's in
``metadata.user_id``. The name is recorded with the call's usage and, when the
organisation has budgets on end users, it picks the end user's budget for the hold.
"""

from __future__ import annotations

from typing import Any

from tokenomy.core.call import Call
from tokenomy.ledger.accounts import MAX_END_USER


def end_user(call: Call) -> str | None:
    """The call's end user, or None (absent, not a string, too long or unprintable)."""
    body = call.body
    if call.dialect == "anthropic":
        meta = body.get("metadata")
        name: Any = meta.get("user_id") if isinstance(meta, dict) else None
    else:
        name = body.get("safety_identifier") or body.get("user")
    if isinstance(name, str) and 0 < len(name) <= MAX_END_USER and name.isprintable():
        return name
    return None
