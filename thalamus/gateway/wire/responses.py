"""The OpenAI Responses API on chat-completions backends: request, response and stream translation.

``POST /v1/responses`` is routed like a chat request: ``to_chat`` turns its body into the chat body the
router and chat-only backends take (``instructions`` -> a system message; ``input`` items -> messages;
function tools, ``tool_choice``, ``text.format`` and ``max_output_tokens`` -> their chat forms; unknown
fields travel as they are). ``from_chat`` turns a chat completion into a ``response`` object, and
``events`` turns a stream of chat chunks into the Responses event sequence (``response.created`` ...
``response.completed``). Backends with ``responses: true`` get the body untouched instead (service side:
core/endpoints.py, ResponsesEndpoint). ``reasoning`` input items (provider state, see wire/conversation.py)
are kept in the native body and left out of the chat form, which has no place for them. Stored
conversations (``previous_response_id``) and built-in tools are refused with a 400: the gateway stores no
responses and runs no tools.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from thalamus.gateway.wire.protocol import RequestError

_PASSED = ("temperature", "top_p", "user", "parallel_tool_calls", "seed", "routing", "stop", "n",
           "presence_penalty", "frequency_penalty", "logit_bias")
_RESPONSE_ONLY = ("input", "instructions", "max_output_tokens", "text", "tools", "tool_choice", "store",
                  "previous_response_id", "include", "truncation", "reasoning", "metadata", "background",
                  "stream", "model", "service_tier", "prompt", "prompt_cache_key", "safety_identifier")


def _bad(message: str, param: str) -> RequestError:
    return RequestError(400, message, param=param)


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _bad(f"{where} must be an object", where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _bad(f"{where}.image_url must be a URL string (file ids are not supported)", where)
        return {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail") or "auto"}}
    raise _bad(f"{where}.type {kind!r} is not supported (input_text, input_image, output_text)", where)


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
    raise _bad(f"{where} must be a string or an array of content parts", where)


def _item(item: Any, i: int, messages: list[dict[str, Any]]) -> None:
    where = f"input[{i}]"
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object", where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise _bad(f"{where}.role must be user, assistant, system or developer", f"{where}.role")
        messages.append({"role": "system" if role == "developer" else role,
                         "content": _content(item.get("content"), f"{where}.content")})
    elif kind == "function_call":
        call = {"id": str(item.get("call_id") or item.get("id") or f"call_{i}"), "type": "function",
                "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        messages.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""),
                         "content": output if isinstance(output, str) else json.dumps(output)})
    elif kind != "reasoning":  # a reasoning item is the provider's state: native backends get it, chat has no form
        raise _bad(f"{where}.type {kind!r} is not supported (message, function_call, function_call_output, "
                   "reasoning)", f"{where}.type")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise _bad(f"tools[{i}]: only function tools with a 'name' are supported (the gateway runs no "
                       "built-in tools)", f"tools[{i}]")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad(f"text.format.type {fmt['type']!r} is not supported", "text.format.type")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions body for a Responses request; 400s name the field."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("'model' is required and must be a non-empty string", "model")
    if body.get("previous_response_id") is not None:
        raise _bad("previous_response_id is not supported: the gateway stores no responses; send the whole "
                   "conversation in 'input'", "previous_response_id")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _bad("'stream' must be a boolean", "stream")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str) and given:
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list) and given:
        before = len(messages)
        for i, item in enumerate(given):
            _item(item, i, messages)
        if len(messages) == before:  # reasoning items only: nothing for a model to answer
            raise _bad("'input' needs at least one message or tool item besides reasoning items", "input")
    else:
        raise _bad("'input' is required: a non-empty string or array of input items", "input")
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    chat.update({k: body[k] for k in _PASSED if k in body})
    chat.update({k: v for k, v in body.items() if k not in _PASSED and k not in _RESPONSE_ONLY})  # vendor fields
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = _format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("stream"):
        chat["stream"], chat["stream_options"] = True, {"include_usage": True}
    return chat


def responses_usage(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A Responses ``usage`` in the chat form the ledger accounting reads."""
    if not isinstance(usage, dict):
        return None
    return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")}


def output_text(response: dict[str, Any]) -> str:
    parts = [c.get("text") or "" for item in response.get("output") or [] if isinstance(item, dict)
             for c in item.get("content") or [] if isinstance(c, dict) and c.get("type") == "output_text"]
    return "".join(str(p) for p in parts)


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def call_item(call: dict[str, Any], item_id: str) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"id": item_id, "type": "function_call", "status": "completed", "call_id": str(call.get("id") or item_id),
            "name": str(function.get("name") or ""), "arguments": str(function.get("arguments") or "")}


def envelope(response_id: str, model: str, request: dict[str, Any], status: str,
             output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """A ``response`` object; ``request`` supplies the echoed settings."""
    out: dict[str, Any] = {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": status, "model": model,
        "output": output, "error": None, "incomplete_details": None, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"), "metadata": request.get("metadata") or {},
        "parallel_tool_calls": request.get("parallel_tool_calls", True), "temperature": request.get("temperature"),
        "top_p": request.get("top_p"), "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [], "text": request.get("text") or {"format": {"type": "text"}},
        "usage": usage}
    if status == "incomplete":
        out["incomplete_details"] = {"reason": "max_output_tokens"}
    return out


def from_chat(done: dict[str, Any], request: dict[str, Any], response_id: str, model: str) -> dict[str, Any]:
    """A chat completion (its first choice) as a ``response`` object."""
    choice = (done.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("content"):
        output.append(message_item(f"msg_{response_id[5:]}", str(message["content"])))
    for k, call in enumerate(message.get("tool_calls") or []):
        if isinstance(call, dict):
            output.append(call_item(call, f"fc_{response_id[5:]}_{k}"))
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    return envelope(response_id, model, request, status, output, responses_usage(done.get("usage")))


class _Calls:
    """Tool-call deltas of a chat stream, joined by index."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def feed(self, deltas: Any) -> None:
        for delta in deltas if isinstance(deltas, list) else []:
            if not isinstance(delta, dict):
                continue
            call = self.calls.setdefault(int(delta.get("index") or 0), {"id": None, "function": {"name": "",
                                                                                            "arguments": ""}})
            call["id"] = delta.get("id") or call["id"]
            function = delta.get("function") or {}
            call["function"]["name"] += str(function.get("name") or "")
            call["function"]["arguments"] += str(function.get("arguments") or "")


async def events(chunks: AsyncIterator[dict[str, Any]], request: dict[str, Any], response_id: str,
                 model: str) -> AsyncIterator[dict[str, Any]]:
    """The Responses event sequence for a stream of chat chunks (without ``sequence_number``)."""
    yield {"type": "response.created", "response": envelope(response_id, model, request, "in_progress", [], None)}
    yield {"type": "response.in_progress",
           "response": envelope(response_id, model, request, "in_progress", [], None)}
    item_id, text, opened, usage, finish = f"msg_{response_id[5:]}", [], False, None, None
    calls = _Calls()
    try:
        async for chunk in chunks:
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                finish = choice.get("finish_reason") or finish
                delta = choice.get("delta") or {}
                calls.feed(delta.get("tool_calls"))
                piece = delta.get("content")
                if not piece:
                    continue
                if not opened:
                    opened = True
                    yield {"type": "response.output_item.added", "output_index": 0,
                           "item": {**message_item(item_id, "", "in_progress"), "content": []}}
                    yield {"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
                           "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}
                text.append(str(piece))
                yield {"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                       "content_index": 0, "delta": str(piece), "logprobs": []}
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:  # releases the upstream connection when the client leaves early
            await closer()
    output: list[dict[str, Any]] = []
    if opened:
        full = "".join(text)
        yield {"type": "response.output_text.done", "item_id": item_id, "output_index": 0, "content_index": 0,
               "text": full, "logprobs": []}
        yield {"type": "response.content_part.done", "item_id": item_id, "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "text": full, "annotations": []}}
        output.append(message_item(item_id, full))
        yield {"type": "response.output_item.done", "output_index": 0, "item": output[-1]}
    for k in sorted(calls.calls):
        item = call_item(calls.calls[k], f"fc_{response_id[5:]}_{k}")
        index = len(output)
        yield {"type": "response.output_item.added", "output_index": index, "item": {**item, "arguments": "",
                                                                                     "status": "in_progress"}}
        yield {"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
               "arguments": item["arguments"], "name": item["name"]}
        output.append(item)
        yield {"type": "response.output_item.done", "output_index": index, "item": item}
    status = "incomplete" if finish == "length" else "completed"
    yield {"type": f"response.{status}",
           "response": envelope(response_id, model, request, status, output, responses_usage(usage))}


def encode(event: dict[str, Any], sequence: int) -> bytes:
    """One SSE frame: ``event: TYPE`` and the event with its sequence number as ``data``."""
    data = json.dumps({**event, "sequence_number": sequence}, allow_nan=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
