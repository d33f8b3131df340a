"""A chat-completions stream as the Responses API's semantic events.

Events come in the documented order: ``response.created`` and ``response.in_progress``;
per output item ``response.output_item.added``, its content (``content_part.added``,
``output_text.delta``…, ``output_text.done``, ``content_part.done``; or
``function_call_arguments.delta``…, ``.done``; or for the model's reasoning
``reasoning_text.delta``…, ``.done``) and ``response.output_item.done``; then
``response.completed`` (or ``response.incomplete``) with the usage and cost. Each event
carries a ``sequence_number``. One item is open at a time: a new one closes the last.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from tokenomy.core.ids import stamped_id as new_id
from tokenomy.providers.translate_responses import (
    JSON,
    call_item,
    finish,
    reasoning_item,
    reasoning_of,
    text_item,
)


class ChatToResponsesStream:
    """Feeds on chat chunks; answers the Responses events they amount to."""

    def __init__(self, response: JSON) -> None:
        #: The Response being built; its ``output`` holds the finished items.
        self.response = response
        self._seq = 0
        self._open: JSON | None = None  # the item being streamed
        self._text: list[str] = []
        self._tools: dict[int, JSON] = {}  # chat tool-call index -> its item
        self.finish_reason: Any = None
        self.chat_usage: JSON | None = None
        self.ended = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> list[bytes]:
        snap = copy.deepcopy(self.response)
        return [
            self._event("response.created", response=snap),
            self._event("response.in_progress", response=snap),
        ]

    def feed(self, chunk: JSON) -> list[bytes]:
        """The events of one chat chunk (usage and finish reason are kept for the end)."""
        out: list[bytes] = []
        if isinstance(chunk.get("usage"), dict):
            self.chat_usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue  # the Responses API has one answer
            delta = ch.get("delta") or {}
            thought = reasoning_of(delta)
            if thought is not None:
                out += self._reasoning_delta(thought)
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text_delta(text)
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    out += self._tool_delta(tc)
            if ch.get("finish_reason"):
                self.finish_reason = ch["finish_reason"]
        return out

    def _index(self) -> int:
        return len(self.response["output"])

    def _text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open["type"] != "message":
            out += self._close()
            item = text_item(new_id("msg_"), "", "in_progress")
            self._open, self._text = item, []
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(
                self._event("response.output_item.added", output_index=self._index(), item=item)
            )
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self._index(),
                    content_index=0,
                    part=part,
                )
            )
        self._text.append(text)
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self._open["id"],
                output_index=self._index(),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _reasoning_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open["type"] != "reasoning":
            out += self._close()
            item = reasoning_item(new_id("rs_"), "", "in_progress")
            self._open, self._text = item, []
            out.append(
                self._event("response.output_item.added", output_index=self._index(), item=item)
            )
        self._text.append(text)
        out.append(
            self._event(
                "response.reasoning_text.delta",
                item_id=self._open["id"],
                output_index=self._index(),
                content_index=0,
                delta=text,
            )
        )
        return out

    def _tool_delta(self, tc: JSON) -> list[bytes]:
        out: list[bytes] = []
        index = tc.get("index", 0)
        fn = tc.get("function") or {}
        item = self._tools.get(index)
        if item is None:
            out += self._close()
            item = call_item(
                new_id("fc_"),
                tc.get("id") or new_id("call_"),
                fn.get("name") or "",
                "",
                "in_progress",
            )
            self._tools[index] = self._open = item
            out.append(
                self._event("response.output_item.added", output_index=self._index(), item=item)
            )
        elif item is not self._open:
            return out  # a call already closed gets no more deltas
        elif fn.get("name"):
            item["name"] += fn["name"]
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self._index(),
                    delta=args,
                )
            )
        return out

    def _close(self) -> list[bytes]:
        """Finish the open item: its done events, and it joins the output."""
        item, self._open = self._open, None
        if item is None:
            return []
        i = self._index()
        out: list[bytes] = []
        if item["type"] == "message":
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": []}
            ids = {"item_id": item["id"], "output_index": i, "content_index": 0}
            out.append(self._event("response.output_text.done", **ids, text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", **ids, part=part))
            item = text_item(item["id"], text)
        elif item["type"] == "reasoning":
            text = "".join(self._text)
            ids = {"item_id": item["id"], "output_index": i, "content_index": 0}
            out.append(self._event("response.reasoning_text.done", **ids, text=text))
            item = reasoning_item(item["id"], text)
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=i,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            item["status"] = "completed"
        self.response["output"].append(item)
        out.append(self._event("response.output_item.done", output_index=i, item=item))
        return out

    def end(self, usage: JSON | None) -> list[bytes]:
        """The last events: open items closed, then the finished Response with ``usage``."""
        out = self._close()
        if not any(o["type"] != "reasoning" for o in self.response["output"]):
            # An empty answer is still one (empty) message, as OpenAI's are.
            out += self._text_delta_free_message()
        finish(self.response, self.finish_reason)
        self.response["usage"] = usage
        kind = (
            "response.completed"
            if self.response["status"] == "completed"
            else "response.incomplete"
        )
        out.append(self._event(kind, response=self.response))
        self.ended = True
        return out

    def _text_delta_free_message(self) -> list[bytes]:
        i = self._index()
        item = text_item(new_id("msg_"), "", "in_progress")
        out = [self._event("response.output_item.added", output_index=i, item=item)]
        item = text_item(item["id"], "")
        self.response["output"].append(item)
        out.append(self._event("response.output_item.done", output_index=i, item=item))
        return out

    def fail(self, error: JSON) -> list[bytes]:
        """A stream cut off upstream: ``error`` and ``response.failed``."""
        out = self._close()
        self.response["status"] = "failed"
        self.response["error"] = {
            "code": error.get("code") or "server_error",
            "message": error.get("message") or "The upstream stream failed.",
        }
        out.append(
            self._event(
                "error",
                code=error.get("code"),
                message=self.response["error"]["message"],
                param=None,
            )
        )
        out.append(self._event("response.failed", response=self.response))
        self.ended = True
        return out
