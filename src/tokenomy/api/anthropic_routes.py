"""Anthropic-dialect route: POST /v1/messages, for any model behind the gateway (registered
with the other inference routes by ``app.app_for``)."""

from __future__ import annotations

from typing import Any

from tokenomy.api.edge import InferenceRoute
from tokenomy.core.call import Call
from tokenomy.core.keys import ApiKey
from tokenomy.gateway import validation
from tokenomy.services import Services


def _messages(body: dict[str, Any], key: ApiKey, svc: Services) -> Call:
    model = validation.require_model(body)
    stream = validation.check_messages(body, svc.config.server.max_messages)
    return Call(
        endpoint="messages", dialect="anthropic", body=body, model=model, stream=stream, key=key
    )


INFERENCE = (InferenceRoute("/v1/messages", _messages, anthropic=True),)
