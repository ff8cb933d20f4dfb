"""OpenAI's Responses API at ingress's edge, translated to and from the chat request ingress already serves.

Why translate rather than pass through: as for Anthropic's Messages (:mod:`tollgate_ingress.anthropic_wire`),
every request then takes the one path that is authorized, inspected, routed, metered and billed, and a
Responses client (the Agents SDK, Codex-style agents) can use any model of the catalogue.

Nothing is stored. Tollgate keeps no conversation state, so ``previous_response_id``, ``conversation``,
``item_reference`` items and stored ``prompt`` templates are refused with a 400 that says so, and ``store``
is accepted and ignored (true and false alike: OpenAI's own default is true, so refusing an explicit true
while accepting its omission would be arbitrary); the answer always says ``"store": false``.
``include`` is ignored (it only asks for optional extras). Reasoning items sent back are dropped, as the
chat path cannot carry them; an upstream's reasoning text is not returned as a ``reasoning`` item either
(its tokens are still counted in ``output_tokens_details.reasoning_tokens`` and billed).

Pure: no I/O. Request: :func:`parse_responses_request` → an OpenAI chat body (then
:func:`tollgate_ingress.domain.parse_chat_request`). Answer: :func:`response_from_completion`; stream:
:class:`ResponseStream` turns chat chunks into the Responses event sequence (``response.created``,
``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` …, ``response.function_call_arguments.delta`` …, the matching ``done`` events,
then ``response.completed`` — or ``response.incomplete`` when the output was cut — with the exact usage).
Errors are OpenAI's error JSON, as on ``/v1/chat/completions``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .domain import Usage
from .errors import IngressError, InvalidRequest
from .json_depth import TOO_DEEP, nests_too_deep

__all__ = ["ResponseStream", "ResponsesRequest", "parse_responses_request", "response_from_completion"]

#: Fields translated onto the chat request (or echoed in the answer).
TRANSLATED = frozenset({"model", "input", "instructions", "max_output_tokens", "metadata", "parallel_tool_calls",
                        "stream", "temperature", "top_p", "tools", "tool_choice", "text", "user",
                        "safety_identifier", "reasoning"})

#: Accepted and not acted on: nothing is stored, caching hints and extras change neither the answer nor its bill.
IGNORED = frozenset({"store", "include", "service_tier", "prompt_cache_key", "prompt_cache_retention",
                     "prompt_cache_options", "stream_options", "truncation"})

#: Need state Tollgate does not keep: refused with a 400 that says so.
STATEFUL = {
    "previous_response_id": "previous_response_id is not supported: Tollgate stores no responses. Send the "
                            "whole conversation in 'input' instead.",
    "conversation": "conversation is not supported: Tollgate stores no conversations. Send the whole "
                    "conversation in 'input' instead.",
    "prompt": "prompt (stored prompt templates) is not supported: Tollgate stores no prompts. Send "
              "'instructions' and 'input' instead.",
    "background": "background responses are not supported: Tollgate stores no responses to poll.",
}

#: Finish reasons that end a response as ``incomplete``, and the reason it gives.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """What the answer's translation needs to know about the request."""

    model: str
    stream: bool
    #: The OpenAI chat body the request becomes.
    chat_body: dict[str, Any]
    #: Request fields the Response object echoes back (instructions, tools, tool_choice, …).
    echo: dict[str, Any]


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _text_of(content: Any, where: str, kinds: tuple[str, ...]) -> str:
    """A string, or the text of a list of text parts (``input_text`` / ``output_text`` / ``refusal``)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be a string or an array of content parts", where)
    texts: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = "refusal" if kind == "refusal" else "text"
        if kind not in kinds or not isinstance(part.get(key), str):
            raise _bad(f"'{where}[{i}]' must be one of {', '.join(kinds)} here (got {kind!r})", f"{where}[{i}]")
        texts.append(part[key])
    return "".join(texts)


def _user_parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A user message's content as chat content: text parts and images (files are refused)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be a string or an array of content parts", where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        pwhere = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(f"'{pwhere}.image_url' is required (file_id images need stored files, which "
                           "Tollgate does not keep)", f"{pwhere}.image_url")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"'{pwhere}': a user message may hold input_text and input_image parts (got {kind!r})",
                       pwhere)
    return parts


def _append_call(chat: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """Function calls join the assistant message right before them (chat wants them on one message)."""
    last = chat[-1] if chat else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        chat.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _input_items(items: list[Any], chat: list[dict[str, Any]]) -> None:
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{where}' must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role, content = item.get("role"), item.get("content")
            if role == "user":
                chat.append({"role": "user", "content": _user_parts(content, f"{where}.content")})
            elif role in ("system", "developer"):
                text = _text_of(content, f"{where}.content", ("input_text",))
                chat.append({"role": "system", "content": text})
            elif role == "assistant":
                text = _text_of(content, f"{where}.content", ("output_text", "input_text", "refusal"))
                chat.append({"role": "assistant", "content": text})
            else:
                raise _bad(f"'{where}.role' must be one of user, assistant, system, developer", f"{where}.role")
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
                raise _bad(f"'{where}': a function_call item needs 'call_id' and 'name'", where)
            if not isinstance(arguments, str):
                raise _bad(f"'{where}.arguments' must be a string (JSON)", f"{where}.arguments")
            _append_call(chat, {"id": call_id, "type": "function",
                                "function": {"name": name, "arguments": arguments}})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"'{where}.call_id' is required", f"{where}.call_id")
            output = _text_of(item.get("output"), f"{where}.output", ("input_text", "output_text"))
            chat.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # a previous turn's reasoning: the chat path cannot carry it back (see the module docstring)
        elif kind == "item_reference":
            raise _bad(f"'{where}': item_reference is not supported: Tollgate stores no items. Send the item "
                       "itself.", where)
        else:
            raise _bad(f"'{where}.type' {kind!r} is not supported by the gateway (message, function_call, "
                       "function_call_output and reasoning items are)", f"{where}.type")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _bad(f"'{where}.type' {kind!r} is not supported by the gateway: only function tools are "
                       "(hosted tools run inside OpenAI)", f"{where}.type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"'{where}.name' is required", f"{where}.name")
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("parameters") is not None:
            if not isinstance(tool["parameters"], dict):
                raise _bad(f"'{where}.parameters' must be a JSON schema object", f"{where}.parameters")
            function["parameters"] = tool["parameters"]
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": …}",
               "tool_choice")


def _text_format(text: Any, body: dict[str, Any]) -> None:
    """``text.format`` → ``response_format``; ``text.verbosity`` → chat's ``verbosity``."""
    if not isinstance(text, dict):
        raise _bad("'text' must be an object", "text")
    if text.get("verbosity") is not None:
        body["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        body["response_format"] = {"type": "json_object"}
        return
    if kind == "json_schema" and isinstance(fmt.get("name"), str) and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
        return
    raise _bad("'text.format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
               "{\"type\": \"json_schema\", \"name\": …, \"schema\": {…}}", "text.format")


def parse_responses_request(raw: bytes) -> ResponsesRequest:
    """Validate a ``POST /v1/responses`` body and translate it (see the module docstring). 400 on anything wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    if nests_too_deep(body):
        raise InvalidRequest(TOO_DEEP, code="nesting_too_deep")
    for name, message in STATEFUL.items():
        if body.get(name) not in (None, False):
            raise InvalidRequest(message, param=name, code="unsupported_parameter")
    for name, value in body.items():
        if name not in TRANSLATED and name not in IGNORED and name not in STATEFUL and value is not None:
            raise InvalidRequest(f"'{name}' is not supported by the gateway (it has no equivalent on the routed "
                                 "path)", param=name, code="unsupported_parameter")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _bad("'model' must be a non-empty string", "model")

    chat: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string", "instructions")
        if instructions:
            chat.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        chat.append({"role": "user", "content": items})
    elif isinstance(items, list):
        _input_items(items, chat)
    elif items is None:
        raise InvalidRequest("You must provide an input parameter", param="input", code="missing_required_parameter")
    else:
        raise _bad("'input' must be a string or an array of input items", "input")
    if not any(m["role"] != "system" for m in chat):
        raise _bad("'input' must hold at least one message or item", "input")

    out: dict[str, Any] = {"model": model, "messages": chat}
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    if stream:
        out["stream"] = True
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _bad("'max_output_tokens' must be an integer >= 1", "max_output_tokens")
        out["max_tokens"] = limit
    for name in ("temperature", "top_p", "metadata", "parallel_tool_calls"):
        if body.get(name) is not None:
            out[name] = body[name]  # validated by parse_chat_request and the router, as on chat
    user = body.get("user") or body.get("safety_identifier")
    if user is not None:
        out["user"] = user
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        _text_format(body["text"], out)
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _bad("'reasoning' must be an object", "reasoning")
        if reasoning.get("effort") is not None:
            out["reasoning_effort"] = reasoning["effort"]

    echo = {
        "instructions": instructions,
        "max_output_tokens": limit,
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [{"strict": True, "description": None, "parameters": None, **t} for t in body.get("tools") or ()],
        "text": body.get("text") or {"format": {"type": "text"}},
        "reasoning": reasoning or {"effort": None, "summary": None},
        "user": body.get("user"),
    }
    return ResponsesRequest(model=model, stream=bool(stream), chat_body=out, echo=echo)


# ---- the answer ---------------------------------------------------------------------------------------------


def response_usage(usage: Usage) -> dict[str, Any]:
    """Usage in the Responses convention (input includes cache reads, as OpenAI's ``prompt_tokens``)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_prompt_tokens, "cache_write_tokens": usage.cache_write_tokens
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _suffix(request_id: str) -> str:
    return request_id.removeprefix("req_")


def _response(request: ResponsesRequest, request_id: str, created_at: int, status: str, output: list[Any],
              usage: Usage | None, finish: str | None = None) -> dict[str, Any]:
    reason = INCOMPLETE.get(str(finish)) if finish else None
    return {
        "id": "resp_" + _suffix(request_id),
        "object": "response",
        "created_at": created_at,
        "status": "incomplete" if reason and status == "completed" else status,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "model": request.model,
        "output": output,
        "previous_response_id": None,
        "store": False,
        "truncation": "disabled",
        "usage": response_usage(usage) if usage is not None else None,
        **request.echo,
    }


def _message_item(item_id: str, text: str, status: str = "completed", refusal: bool = False) -> dict[str, Any]:
    part = ({"type": "refusal", "refusal": text} if refusal
            else {"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [part]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def response_from_completion(completion: bytes, request: ResponsesRequest, request_id: str,
                             usage: Usage | None) -> bytes:
    """An OpenAI ``chat.completion`` body as a Responses ``response`` object; ``usage``: what was billed."""
    body = orjson.loads(completion)
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    suffix = _suffix(request_id)
    output: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(_message_item("msg_" + suffix, text))
    elif isinstance(message.get("refusal"), str) and message["refusal"]:
        output.append(_message_item("msg_" + suffix, message["refusal"], refusal=True))
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        arguments = function.get("arguments")
        output.append(_call_item(f"fc_{suffix}_{i}", str(call.get("id") or f"call_{suffix}_{i}"),
                                 str(function.get("name") or ""), arguments if isinstance(arguments, str) else "{}"))
    created = body.get("created")
    created_at = created if isinstance(created, int) and not isinstance(created, bool) else int(time.time())
    return orjson.dumps(_response(request, request_id, created_at, "completed", output, usage,
                                  choice.get("finish_reason")))


@dataclass(slots=True)
class _Call:
    output_index: int
    item_id: str
    call_id: str
    name: str
    arguments: str = ""


@dataclass(slots=True)
class ResponseStream:
    """Chat ``chat.completion.chunk``\\ s in, Responses stream events out, for one streamed response.

    The text message is one output item, closed when a function call starts or the stream ends; each function
    call is its own item, open until the end (their arguments may interleave). Only choice 0 is translated
    (a Responses request has no ``n``)."""

    request: ResponsesRequest
    request_id: str
    created_at: int = field(default_factory=lambda: int(time.time()))
    started: bool = False
    _sequence: int = 0
    _output: dict[int, dict[str, Any]] = field(default_factory=dict)  # output index → the finished item
    _next_index: int = 0
    _text: str | None = None  # the open message's text, None when no message is open
    _text_index: int = 0
    _messages: int = 0
    _calls: dict[int, _Call] = field(default_factory=dict)  # chat tool_calls index → the call
    _finish: str | None = None

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _snapshot(self, status: str, usage: Usage | None = None) -> dict[str, Any]:
        output = [self._output[i] for i in sorted(self._output)]
        return _response(self.request, self.request_id, self.created_at, status, output, usage, self._finish)

    def _start(self) -> bytes:
        self.started = True
        snapshot = self._snapshot("in_progress")
        return (self._event("response.created", {"response": snapshot})
                + self._event("response.in_progress", {"response": snapshot}))

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{_suffix(self.request_id)}"

    def _open_text(self) -> bytes:
        self._text, self._text_index = "", self._next_index
        self._next_index += 1
        self._messages += 1
        item_id = self._message_id()
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return (self._event("response.output_item.added", {"output_index": self._text_index, "item": item})
                + self._event("response.content_part.added", {"item_id": item_id, "output_index": self._text_index,
                                                              "content_index": 0, "part": part}))

    def _message_id(self) -> str:
        base = self._item_id("msg")
        return base if self._messages <= 1 else f"{base}_{self._messages}"

    def _close_text(self) -> bytes:
        if self._text is None:
            return b""
        text, index, item_id = self._text, self._text_index, self._message_id()
        self._text = None
        item = _message_item(item_id, text)
        self._output[index] = item
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        return (self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
                + self._event("response.content_part.done", {**where, "part": item["content"][0]})
                + self._event("response.output_item.done", {"output_index": index, "item": item}))

    def chunk(self, raw: bytes) -> bytes:
        """The events for one chat chunk (possibly none)."""
        try:
            chunk = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(chunk, dict):
            return b""
        out = b"" if self.started else self._start()
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._text is None:
                    out += self._open_text()
                assert self._text is not None
                self._text += text
                out += self._event("response.output_text.delta", {
                    "item_id": self._message_id(), "output_index": self._text_index, "content_index": 0,
                    "delta": text, "logprobs": []})
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return out

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        position = call.get("index", 0)
        function = call.get("function") or {}
        out = b""
        current = self._calls.get(position)
        if current is None:
            out += self._close_text()
            number = len(self._calls)
            current = _Call(output_index=self._next_index, item_id=f"{self._item_id('fc')}_{number}",
                            call_id=str(call.get("id") or f"call_{_suffix(self.request_id)}_{number}"),
                            name=str(function.get("name") or ""))
            self._next_index += 1
            self._calls[position] = current
            item = _call_item(current.item_id, current.call_id, current.name, "", "in_progress")
            out += self._event("response.output_item.added", {"output_index": current.output_index, "item": item})
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            current.arguments += arguments
            out += self._event("response.function_call_arguments.delta", {
                "item_id": current.item_id, "output_index": current.output_index, "delta": arguments})
        return out

    def end(self, usage: Usage) -> bytes:
        """The closing events, with the exact usage."""
        out = b"" if self.started else self._start()
        out += self._close_text()
        for call in self._calls.values():
            item = _call_item(call.item_id, call.call_id, call.name, call.arguments)
            self._output[call.output_index] = item
            out += self._event("response.function_call_arguments.done", {
                "item_id": call.item_id, "output_index": call.output_index, "arguments": call.arguments})
            out += self._event("response.output_item.done", {"output_index": call.output_index, "item": item})
        final = self._snapshot("completed", usage)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, {"response": final})

    def error(self, error: IngressError) -> bytes:
        """An error met after the stream started: the Responses ``error`` event (OpenAI's code and message)."""
        return self._event("error", {"code": error.code, "message": error.message, "param": error.param})
