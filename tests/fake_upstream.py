"""A fake OpenAI and Anthropic API on 127.0.0.1, speaking their real streaming wire formats.

The real SDKs are pointed at it through their ``base_url``: OpenAI at
:attr:`FakeUpstream.openai_base_url` (``POST /v1/chat/completions``, ``data:`` lines, a usage
chunk with ``choices: []``, then ``data: [DONE]``) and Anthropic at
:attr:`FakeUpstream.anthropic_base_url` (``POST /v1/messages``, ``event:``/``data:`` pairs
from ``message_start`` to ``message_stop``). Error answers use each API's error JSON.

Each answer follows a :class:`Script`: the default one, or the next queued with
:meth:`FakeUpstream.enqueue`. Every request is recorded (:class:`RecordedRequest`) with
what was sent back and whether the client went away before the end, so a test can
prove that closing a stream closes the upstream connection, or that a paused reader
stops pulling tokens. ``gate`` holds the answer before its next token while cleared.

    async with FakeUpstream(api_key="sk-test") as fake:
        fake.script = Script(tokens=["Hello", " world"], pause_after=1)
        ...  # point the SDK at fake.openai_base_url
        request = await fake.wait_for_request()
        await request.wait_sent(tokens=1)
        fake.gate.set()
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.test_utils import TestServer

WAIT = 10.0
"""How long the ``wait_*`` helpers wait before failing the test."""

Hang = Literal["before_headers", "before_first_token"]


@dataclass
class Script:
    """What the fake answers to one request."""

    tokens: Sequence[str] = ("Hello", ",", " world", "!")
    #: An error status (401, 404, 429, 500, 529, ...) answers with that API's error JSON.
    status: int = 200
    #: The error's message; by default one like the real API's.
    error_message: str | None = None
    #: The error's ``type`` (OpenAI ``error.type``, Anthropic ``error.type``); by default per status.
    error_type: str | None = None
    #: Pacing between tokens, in seconds.
    token_delay: float = 0.0
    #: Stall (until the fake closes or the client leaves) before the headers or the first token.
    hang: Hang | None = None
    #: Abort the TCP connection after this many tokens.
    drop_after: int | None = None
    #: Send an in-stream error event (``error_type``/``error_message``) after this many tokens.
    error_after: int | None = None
    #: Clear :attr:`FakeUpstream.gate` after this many tokens, so the answer holds there.
    pause_after: int | None = None
    #: Default: ``"stop"`` for OpenAI, ``"end_turn"`` for Anthropic.
    finish_reason: str | None = None
    #: The model the answer reports; by default the requested one.
    model: str | None = None
    prompt_tokens: int = 11
    #: Sent as ``retry-after-ms`` on 429 and 5xx answers, so SDK retries are quick.
    retry_after_ms: int | None = 1


@dataclass
class RecordedRequest:
    """One request the fake received, and what became of its answer."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    tokens_sent: int = 0
    #: Bytes of the response body written and flushed to the socket.
    bytes_sent: int = 0
    #: The whole answer was written.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    #: The client closed the connection before the answer was complete.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_sent(self, tokens: int) -> None:
        """Wait until at least ``tokens`` tokens were written and flushed."""
        async with asyncio.timeout(WAIT), self._progress:
            await self._progress.wait_for(lambda: self.tokens_sent >= tokens)

    async def wait_finished(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.finished.wait()

    async def wait_disconnected(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.disconnected.wait()

    async def _sent(self, size: int, *, token: bool) -> None:
        async with self._progress:
            self.bytes_sent += size
            if token:
                self.tokens_sent += 1
            self._progress.notify_all()


class FakeUpstream:
    """The fake API server. ``api_key`` set: any other key gets a 401 like the real API's."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.script = Script()
        self.requests: list[RecordedRequest] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._queue: list[Script] = []
        self._closing = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._server: TestServer | None = None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> str:
        """Start on an ephemeral port of 127.0.0.1; returns the root URL."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        self._server = TestServer(app, host="127.0.0.1")
        # The handler is cancelled when its client disconnects: that is how a drop is seen.
        await self._server.start_server(shutdown_timeout=2.0)
        return self.url

    async def close(self) -> None:
        self._closing.set()
        self.gate.set()
        if self._server is not None:
            await self._server.close()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return str(self._server.make_url("")).rstrip("/")

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # -- scripting and observation --------------------------------------------

    def enqueue(self, *scripts: Script) -> None:
        """Answer the next requests with these scripts, in order, then with :attr:`script`."""
        self._queue.extend(scripts)

    async def wait_for_request(self, index: int = 0) -> RecordedRequest:
        """The ``index``-th request received, waiting for it to arrive."""
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) > index)
        return self.requests[index]

    # -- the two APIs ----------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _OpenAIWire())

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _AnthropicWire())

    async def _answer(self, request: web.Request, wire: _Wire) -> web.StreamResponse:
        body = await request.json()
        record = RecordedRequest(request.path, dict(request.headers), body)
        async with self._arrived:
            self.requests.append(record)
            self._arrived.notify_all()
        script = self._queue.pop(0) if self._queue else self.script
        model = script.model or str(body.get("model", ""))

        if self.api_key is not None and wire.key(request) != self.api_key:
            received = wire.key(request) or ""
            error = Script(status=401, error_message=wire.bad_key_message(received))
            return self._error(wire, error, model)
        if script.status >= 400:
            return self._error(wire, script, model)
        response = web.StreamResponse(headers=wire.stream_headers())
        try:
            await self._stream(record, request, response, wire, script, model)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when its client disconnects (handler_cancellation).
            record.disconnected.set()
            raise
        except ConnectionResetError:
            record.disconnected.set()
        return response

    async def _stream(
        self,
        record: RecordedRequest,
        request: web.Request,
        response: web.StreamResponse,
        wire: _Wire,
        script: Script,
        model: str,
    ) -> None:
        if script.hang == "before_headers":
            await self._closing.wait()
            return
        await response.prepare(request)
        await self._write(record, response, wire.start(model, script), token=False)
        if script.hang == "before_first_token":
            await self._closing.wait()
            return
        for index, token in enumerate(script.tokens):
            if index == script.drop_after:
                assert request.transport is not None
                request.transport.abort()
                return
            if index == script.error_after:
                await self._write(record, response, wire.stream_error(script), token=False)
                break
            if index == script.pause_after:
                self.gate.clear()
            if index > 0 and script.token_delay:
                await asyncio.sleep(script.token_delay)
            await self.gate.wait()
            if self._closing.is_set():
                return
            await self._write(record, response, wire.token(model, token), token=True)
        else:
            await self._write(record, response, wire.end(model, script, record.body), token=False)
        await response.write_eof()
        record.finished.set()

    @staticmethod
    async def _write(
        record: RecordedRequest, response: web.StreamResponse, data: bytes, *, token: bool
    ) -> None:
        await response.write(data)
        await record._sent(len(data), token=token)

    @staticmethod
    def _error(wire: _Wire, script: Script, model: str) -> web.Response:
        headers = {}
        if script.retry_after_ms is not None and (script.status == 429 or script.status >= 500):
            headers["retry-after-ms"] = str(script.retry_after_ms)
        return web.json_response(wire.error_body(script, model), status=script.status, headers=headers)


class _Wire(ABC):
    """One API's wire format."""

    def key(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        return request.headers.get("x-api-key")

    def stream_headers(self) -> dict[str, str]:
        return {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}

    @abstractmethod
    def bad_key_message(self, received: str) -> str: ...

    @abstractmethod
    def start(self, model: str, script: Script) -> bytes: ...

    @abstractmethod
    def token(self, model: str, text: str) -> bytes: ...

    @abstractmethod
    def end(self, model: str, script: Script, body: dict[str, Any]) -> bytes: ...

    @abstractmethod
    def stream_error(self, script: Script) -> bytes: ...

    @abstractmethod
    def error_body(self, script: Script, model: str) -> dict[str, Any]: ...


class _OpenAIWire(_Wire):
    """Chat Completions streaming: ``data: <chat.completion.chunk>`` lines, then ``[DONE]``."""

    _ERRORS = {
        400: ("invalid_request_error", None, "Invalid request."),
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        403: ("invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
        404: ("invalid_request_error", "model_not_found", "The model `{model}` does not exist."),
        429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again."),
        500: (
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    }

    def __init__(self) -> None:
        self._id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self._created = int(time.time())

    def bad_key_message(self, received: str) -> str:
        # The real API shows the key masked; echoing it whole proves redaction downstream.
        return (
            f"Incorrect API key provided: {received}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )

    def _chunk(self, model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def start(self, model: str, script: Script) -> bytes:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return self._chunk(model, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def token(self, model: str, text: str) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        return self._chunk(model, [choice])

    def end(self, model: str, script: Script, body: dict[str, Any]) -> bytes:
        finish = script.finish_reason or "stop"
        data = self._chunk(model, [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            completion = len(script.tokens)
            usage = {
                "prompt_tokens": script.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": script.prompt_tokens + completion,
            }
            data += self._chunk(model, [], usage=usage)
        return data + b"data: [DONE]\n\n"

    def stream_error(self, script: Script) -> bytes:
        error = {
            "message": script.error_message or "The server had an error while processing your request.",
            "type": script.error_type or "server_error",
            "param": None,
            "code": None,
        }
        return f"data: {json.dumps({'error': error})}\n\n".encode()

    def error_body(self, script: Script, model: str) -> dict[str, Any]:
        kind, code, message = self._ERRORS.get(script.status, ("api_error", None, "Error."))
        return {
            "error": {
                "message": script.error_message or message.format(model=model),
                "type": script.error_type or kind,
                "param": "model" if code == "model_not_found" else None,
                "code": code,
            }
        }


class _AnthropicWire(_Wire):
    """Messages streaming: ``event:``/``data:`` pairs from ``message_start`` to ``message_stop``."""

    _ERRORS = {
        400: ("invalid_request_error", "Invalid request."),
        401: ("authentication_error", "invalid x-api-key"),
        403: ("permission_error", "Your API key does not have permission to use the specified resource."),
        404: ("not_found_error", "model: {model}"),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
        500: ("api_error", "Internal server error"),
        529: ("overloaded_error", "Overloaded"),
    }

    def __init__(self) -> None:
        self._id = f"msg_{uuid.uuid4().hex[:24]}"

    def bad_key_message(self, received: str) -> str:
        return "invalid x-api-key"

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    def start(self, model: str, script: Script) -> bytes:
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": script.prompt_tokens, "output_tokens": 1},
        }
        return (
            self._event("message_start", {"type": "message_start", "message": message})
            + self._event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            + self._event("ping", {"type": "ping"})
        )

    def token(self, model: str, text: str) -> bytes:
        delta = {"type": "text_delta", "text": text}
        return self._event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    def end(self, model: str, script: Script, body: dict[str, Any]) -> bytes:
        delta = {"stop_reason": script.finish_reason or "end_turn", "stop_sequence": None}
        return (
            self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + self._event(
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": {"output_tokens": len(script.tokens)}},
            )
            + self._event("message_stop", {"type": "message_stop"})
        )

    def stream_error(self, script: Script) -> bytes:
        error = {
            "type": script.error_type or "overloaded_error",
            "message": script.error_message or "Overloaded",
        }
        return self._event("error", {"type": "error", "error": error})

    def error_body(self, script: Script, model: str) -> dict[str, Any]:
        kind, message = self._ERRORS.get(script.status, ("api_error", "Error."))
        return {
            "type": "error",
            "error": {
                "type": script.error_type or kind,
                "message": script.error_message or message.format(model=model),
            },
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }
