"""Content-part translation shared by the request translators: text, images, files, tool ids.

OpenAI carries content as a string or a list of typed parts; Anthropic as a string or a list
of typed blocks. These helpers convert one part or block at a time and raise
:class:`InvalidRequest` (naming the offending parameter) for anything with no counterpart.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tokenomy.core.errors import InvalidRequest

JSON = dict[str, Any]

# The media types Anthropic accepts for base64 images; anything else would be a 400 upstream.
_ANTHROPIC_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Anthropic tool ids must match ^[a-zA-Z0-9_-]+$; some OpenAI-dialect vendors issue ids with
# dots or colons (e.g. "functions.get_weather:0").
_TOOL_ID_INVALID = re.compile(r"[^a-zA-Z0-9_-]")


def as_object(value: Any) -> JSON:
    """value if it is a JSON object, else an empty one: vendor fields may be null or odd."""
    return value if isinstance(value, dict) else {}


def anthropic_tool_id(raw: Any) -> str:
    """An id Anthropic accepts, derived deterministically so tool_use and tool_result match."""
    text = raw if isinstance(raw, str) else ""
    return _TOOL_ID_INVALID.sub("_", text) or "toolu_missing"


def arguments_to_input(arguments: Any) -> JSON:
    """A tool call's JSON arguments string as an Anthropic ``input`` object.

    Anthropic needs an object; arguments that are not a JSON object (models do emit broken
    JSON) are kept verbatim under ``_raw`` so nothing is lost and the reverse is exact.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return parsed if isinstance(parsed, dict) else {"_raw": text}


def input_to_arguments(tool_input: Any) -> str:
    """An Anthropic tool ``input`` as an OpenAI arguments string (inverse of the above)."""
    if isinstance(tool_input, dict) and set(tool_input) == {"_raw"}:
        raw = tool_input["_raw"]
        if isinstance(raw, str):
            return raw
    value = tool_input if tool_input is not None else {}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def text_of(content: Any, *, sep: str, param: str) -> str:
    """The text of string-or-parts content (OpenAI parts or Anthropic blocks), joined by sep."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list", param=param)
    texts: list[str] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidRequest(f"{param}[{i}] of type {kind!r} must be text", param=param)
        value = part.get("text", part.get("refusal"))
        if isinstance(value, str):
            texts.append(value)
    return sep.join(texts)


# --- OpenAI parts -> Anthropic blocks -------------------------------------------------------


def openai_text_blocks(content: Any, *, param: str) -> list[JSON]:
    """OpenAI text content (string or text parts) as Anthropic text blocks, empties dropped."""
    if isinstance(content, str) or content is None:
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list", param=param)
    blocks: list[JSON] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            raise InvalidRequest(f"{param}[{i}] must be a text part", param=f"{param}[{i}]")
        block = _text_block(part.get("text", part.get("refusal")), part)
        if block is not None:
            blocks.append(block)
    return blocks


def openai_user_blocks(content: Any, *, param: str) -> list[JSON]:
    """An OpenAI user message's content as Anthropic blocks (text, image, document)."""
    if isinstance(content, str) or content is None:
        return openai_text_blocks(content, param=param)
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list", param=param)
    blocks: list[JSON] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            block = _text_block(part.get("text"), part)
            blocks.extend([block] if block else [])
        elif kind == "image_url":
            blocks.append(_image_block(part, param=where))
        elif kind == "file":
            blocks.append(_document_block(part, param=where))
        else:
            raise InvalidRequest(f"content part type {kind!r} is not supported here", param=where)
    return blocks


def _text_block(text: Any, part: JSON) -> JSON | None:
    if not isinstance(text, str) or not text:
        return None  # Anthropic rejects empty text blocks
    block: JSON = {"type": "text", "text": text}
    if "cache_control" in part:  # some OpenAI-dialect clients already mark cache breakpoints
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(part: JSON, *, param: str) -> JSON:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest("image_url.url is required", param=param)
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = parse_data_url(url, param=param)
    media_type = "image/jpeg" if media_type == "image/jpg" else media_type
    if media_type not in _ANTHROPIC_IMAGE_TYPES:
        raise InvalidRequest(f"image type {media_type!r} is not supported", param=param)
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document_block(part: JSON, *, param: str) -> JSON:
    file = as_object(part.get("file"))
    file_data = file.get("file_data")
    if not isinstance(file_data, str) or not file_data:
        # file_id points into OpenAI's file store, which no other vendor can read.
        raise InvalidRequest("only inline file_data (a PDF data URL) is supported", param=param)
    if file_data.startswith("data:"):
        media_type, data = parse_data_url(file_data, param=param)
    else:
        media_type, data = "application/pdf", file_data
    if media_type != "application/pdf":
        raise InvalidRequest(f"file type {media_type!r} is not supported", param=param)
    block: JSON = {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }
    if isinstance(file.get("filename"), str):
        block["title"] = file["filename"]
    return block


def parse_data_url(url: str, *, param: str) -> tuple[str, str]:
    """(media type, base64 payload) of a ``data:<type>;base64,<payload>`` URL."""
    header, sep, data = url.removeprefix("data:").partition(",")
    fields = header.split(";")
    if not url.startswith("data:") or not sep or "base64" not in fields[1:]:
        raise InvalidRequest("expected an http(s) URL or a base64 data URL", param=param)
    return fields[0].lower(), data


# --- Anthropic blocks -> OpenAI parts -------------------------------------------------------


def anthropic_user_part(block: JSON, *, param: str) -> JSON:
    """One Anthropic user block (text, image, document) as an OpenAI content part."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    source = as_object(block.get("source"))
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _source_url(source, param=param)}}
    if kind == "document":
        return _file_part(block, source, param=param)
    raise InvalidRequest(f"content block type {kind!r} has no OpenAI equivalent", param=param)


def _source_url(source: JSON, *, param: str) -> str:
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
    raise InvalidRequest(f"image source {source.get('type')!r} is not supported", param=param)


def _file_part(block: JSON, source: JSON, *, param: str) -> JSON:
    stype = source.get("type")
    if stype == "text":  # plain-text documents are just text to an OpenAI model
        return {"type": "text", "text": source.get("data", "")}
    if stype == "base64" and source.get("media_type") == "application/pdf":
        file: JSON = {"file_data": f"data:application/pdf;base64,{source.get('data', '')}"}
        file["filename"] = block.get("title") or "document.pdf"
        return {"type": "file", "file": file}
    raise InvalidRequest(f"document source {stype!r} is not supported", param=param)
