"""A fake OpenAI and Anthropic API on 127.0.0.1, speaking their real streaming wire formats.

The real SDKs are pointed at it through their ``base_url``: OpenAI at
:attr:`FakeUpstream.openai_base_url` (``POST /v1/chat/completions``, ``data:`` lines, a usage
chunk with ``choices: []``, then ``data: [DONE]``) and Anthropic at
:attr:`FakeUpstream.anthropic_base_url` (``POST /v1/messages``, ``event:``/``data:`` pairs
from ``message_start`` to ``message_stop``). Error answers use each API's error JSON.

OpenAI's Responses API is there too, background mode included (``POST /v1/responses``,
``GET /v1/responses/{id}[?stream=true&starting_after=N]``, ``POST /v1/responses/{id}/cancel``):
each response is a :class:`FakeResponse`, whose events a task of its own produces, paced by
the script, whether or not a client is connected; a connection only reads them (see
:class:`FakeResponse`).

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

    # Background mode: the response goes on after its client is gone.
    response = await fake.wait_for_response()
    await response.wait_deltas(2)
    ...  # kill the client, resume with GET /v1/responses/{response.id}?stream=true&starting_after=N
    await fake.wait_cancelled(response.id)
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from providers.base import AIChunk, ProviderError, ProviderSettings

WAIT = 10.0
"""How long the ``wait_*`` helpers wait before failing the test."""

Hang = Literal["before_headers", "before_first_token"]

ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]


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
    #: How ``error_after`` ends a Responses API answer: a ``response.failed`` event (the
    #: response's ``error`` says why) or an ``error`` event; either way it has failed.
    #: Its code is ``error_type`` (default ``server_error``).
    response_error: Literal["failed", "error"] = "failed"


@dataclass
class RecordedRequest:
    """One request the fake received, and what became of its answer."""

    path: str
    headers: dict[str, str]
    #: The JSON body (``{}`` for a ``GET``).
    body: dict[str, Any]
    tokens_sent: int = 0
    #: Bytes of the response body written and flushed to the socket.
    bytes_sent: int = 0
    #: The whole answer was written.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    #: The client closed the connection before the answer was complete.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    method: str = "POST"
    #: The query string, e.g. ``{"stream": "true", "starting_after": "7"}``.
    query: dict[str, str] = field(default_factory=dict)

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


class FakeResponse:
    """One Responses API answer: its events, produced by a task of its own as the script says.

    The task appends each event (``sequence_number`` = its index in :attr:`events`) whether
    or not anyone is connected, as OpenAI does in background mode: a connection (the
    ``POST`` that created it, or a ``GET ?stream=true&starting_after=N``) only reads the
    list, and leaving does not stop the generation. (Without ``background`` the generation
    stops with the creating connection.) Events: ``response.created``,
    ``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
    one ``response.output_text.delta`` per token, ``response.output_text.done``,
    ``response.content_part.done``, ``response.output_item.done``, then
    ``response.completed``; or ``response.incomplete`` (``max_output_tokens`` reached, or
    ``finish_reason="length"``), ``response.failed`` / ``error`` (``error_after``). A
    cancelled response gets no further event (the SDK knows no event for it): its streams end
    and its status is ``cancelled``.

        response = await fake.wait_for_response()
        await response.wait_deltas(3)       # three tokens generated
        response.text                       # "Hello, world"
        await response.wait_done()
        assert response.status == "completed"
    """

    def __init__(self, response_id: str, body: dict[str, Any], script: Script, model: str) -> None:
        self.id = response_id
        self.body = body
        self.script = script
        self.model = model
        self.background = bool(body.get("background"))
        self.created_at = int(time.time())
        self.status: ResponseStatus = "queued"
        #: Every event so far, as sent on the wire (without the ``event:`` line).
        self.events: list[dict[str, Any]] = []
        #: The text generated so far, and in how many deltas.
        self.text = ""
        self.deltas = 0
        #: How many times ``POST /v1/responses/{id}/cancel`` was called.
        self.cancel_calls = 0
        self.cancel_requested = asyncio.Event()
        #: The response has ended: completed, incomplete, failed or cancelled.
        self.done = asyncio.Event()
        self._error: dict[str, Any] | None = None
        self._incomplete: str | None = None
        self._usage: dict[str, Any] | None = None
        self._completed_at: int | None = None
        self._item_id = f"msg_{uuid.uuid4().hex}"
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    # -- observation ------------------------------------------------------------

    async def wait_deltas(self, count: int) -> None:
        """Wait until at least ``count`` text deltas were generated."""
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: self.deltas >= count or self.done.is_set())
        assert self.deltas >= count, f"the response ended ({self.status}) after {self.deltas} deltas"

    async def wait_done(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.done.wait()

    async def wait_cancelled(self) -> None:
        """Wait until its ``cancel`` endpoint was called."""
        async with asyncio.timeout(WAIT):
            await self.cancel_requested.wait()

    async def read(self, after: int) -> list[dict[str, Any]]:
        """The events after sequence number ``after``, waiting for the next one if there is
        none yet; ``[]`` once the response has ended and they were all read."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.events) > after + 1 or self.done.is_set())
            return self.events[after + 1 :]

    def snapshot(self) -> dict[str, Any]:
        """The response object, as ``GET /v1/responses/{id}`` returns it."""
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": self.background,
            "completed_at": self._completed_at,
            "error": self._error,
            "incomplete_details": None if self._incomplete is None else {"reason": self._incomplete},
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": self.model,
            "output": [self._message()] if self.events and self.status != "queued" else [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "auto",
            "store": bool(body.get("store", True)),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self._usage,
            "user": None,
            "metadata": {},
        }

    # -- generation -------------------------------------------------------------

    def _start(self, gate: asyncio.Event) -> None:
        self._task = asyncio.create_task(self._run(gate), name=f"fake-response-{self.id}")

    async def _run(self, gate: asyncio.Event) -> None:
        try:
            await self._generate(gate)
        finally:
            async with self._changed:
                self.done.set()
                self._changed.notify_all()

    async def _generate(self, gate: asyncio.Event) -> None:
        script = self.script
        await self._emit("response.created", response=self.snapshot())
        self.status = "in_progress"
        await self._emit("response.in_progress", response=self.snapshot())
        await self._emit("response.output_item.added", output_index=0, item=self._message())
        await self._emit("response.content_part.added", **self._where(), part=self._part(""))
        if script.hang == "before_first_token":
            await asyncio.Event().wait()  # until cancelled, or the fake closes
        limit = self.body.get("max_output_tokens")
        for index, token in enumerate(script.tokens):
            if limit is not None and index >= limit:
                await self._end_text("incomplete", "max_output_tokens")
                return
            if index == script.error_after:
                await self._fail()
                return
            if index == script.pause_after:
                gate.clear()
            if index > 0 and script.token_delay:
                await asyncio.sleep(script.token_delay)
            await gate.wait()
            self.text += token
            self.deltas += 1
            await self._emit(
                "response.output_text.delta",
                **self._where(),
                delta=token,
                logprobs=[],
                obfuscation=uuid.uuid4().hex[: max(1, 16 - len(token))],
            )
        if script.finish_reason == "length":
            await self._end_text("incomplete", "max_output_tokens")
        else:
            await self._end_text("completed", None)

    async def _end_text(self, status: ResponseStatus, reason: str | None) -> None:
        item_status = "completed" if status == "completed" else "incomplete"
        await self._emit("response.output_text.done", **self._where(), text=self.text, logprobs=[])
        await self._emit("response.content_part.done", **self._where(), part=self._part(self.text))
        await self._emit("response.output_item.done", output_index=0, item=self._message(item_status))
        self.status = status
        self._incomplete = reason
        self._completed_at = int(time.time()) if status == "completed" else None
        self._usage = {
            "input_tokens": self.script.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": self.deltas,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.script.prompt_tokens + self.deltas,
        }
        await self._emit(f"response.{status}", response=self.snapshot())

    async def _fail(self) -> None:
        script = self.script
        code = script.error_type or "server_error"
        message = script.error_message or "The server had an error while processing your request."
        self.status = "failed"
        self._error = {"code": code, "message": message}
        if script.response_error == "error":
            await self._emit("error", code=code, message=message, param=None)
        else:
            await self._emit("response.failed", response=self.snapshot())

    async def _emit(self, kind: str, **fields: Any) -> None:
        async with self._changed:
            self.events.append({"type": kind, **fields, "sequence_number": len(self.events)})
            self._changed.notify_all()

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._item_id, "output_index": 0, "content_index": 0}

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _message(self, status: str | None = None) -> dict[str, Any]:
        """The output message; its status follows the response's unless given."""
        if status is None:
            status = {"queued": "in_progress", "in_progress": "in_progress", "completed": "completed"}.get(
                self.status, "incomplete"
            )
        content = [self._part(self.text)] if self.text or status != "in_progress" else []
        return {
            "id": self._item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    # -- cancel -----------------------------------------------------------------

    async def _cancel(self) -> None:
        """``POST .../cancel``: counted, and the generation stops if it still runs."""
        self.cancel_calls += 1
        self.cancel_requested.set()
        await self._stop("cancelled")

    async def _stop(self, status: ResponseStatus | None) -> None:
        """Stop the generation; a response that had not ended gets ``status`` (if given)."""
        task = self._task
        if task is None or task.done():
            return
        if status is not None:
            self.status = status
        task.cancel()
        await asyncio.wait({task})


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


class FakeUpstream:
    """The fake API server. ``api_key`` set: any other key gets a 401 like the real API's."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.script = Script()
        self.requests: list[RecordedRequest] = []
        #: Responses API answers by id, in the order they were created.
        self.responses: dict[str, FakeResponse] = {}
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
        app.router.add_post("/v1/responses", self._responses_create)
        app.router.add_get("/v1/responses/{response_id}", self._responses_retrieve)
        app.router.add_post("/v1/responses/{response_id}/cancel", self._responses_cancel)
        self._server = TestServer(app, host="127.0.0.1")
        # The handler is cancelled when its client disconnects: that is how a drop is seen.
        await self._server.start_server(shutdown_timeout=2.0)
        return self.url

    async def close(self) -> None:
        self._closing.set()
        self.gate.set()
        for response in self.responses.values():
            await response._stop(None)
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
        """Answer the next requests with these scripts, in order, then with :attr:`script`.

        Every request takes one but a Responses API ``cancel``.
        """
        self._queue.extend(scripts)

    async def wait_for_request(self, index: int = 0) -> RecordedRequest:
        """The ``index``-th request received, waiting for it to arrive."""
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) > index)
        return self.requests[index]

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """The requests received so far with this method and path, e.g.
        ``fake.requests_to("GET", f"/v1/responses/{response.id}")``."""
        return [r for r in self.requests if r.method == method and r.path == path]

    async def wait_for_request_to(self, method: str, path: str, index: int = 0) -> RecordedRequest:
        """The ``index``-th request with this method and path, waiting for it to arrive; e.g.
        the first resumption of a response: ``await fake.wait_for_request_to("GET",
        f"/v1/responses/{response.id}")``, then ``.query["starting_after"]``."""
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests_to(method, path)) > index)
        return self.requests_to(method, path)[index]

    async def wait_for_response(self, index: int = 0) -> FakeResponse:
        """The ``index``-th Responses API answer created, waiting for it."""
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: len(self.responses) > index)
        return list(self.responses.values())[index]

    async def wait_cancelled(self, response_id: str) -> FakeResponse:
        """Wait until ``POST /v1/responses/{response_id}/cancel`` was called."""
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: response_id in self.responses)
        response = self.responses[response_id]
        await response.wait_cancelled()
        return response

    # -- the two APIs ----------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _OpenAIWire())

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _AnthropicWire())

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        body = json.loads(raw) if raw.strip() else {}
        record = RecordedRequest(
            request.path, dict(request.headers), body, method=request.method, query=dict(request.query)
        )
        async with self._arrived:
            self.requests.append(record)
            self._arrived.notify_all()
        return record

    def _next_script(self) -> Script:
        return self._queue.pop(0) if self._queue else self.script

    async def _answer(self, request: web.Request, wire: _Wire) -> web.StreamResponse:
        record = await self._record(request)
        body = record.body
        script = self._next_script()
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

    # -- the Responses API -------------------------------------------------------

    def _refused(self, request: web.Request, script: Script, model: str) -> web.Response | None:
        """The error answer for a wrong key or an error status, if any."""
        wire = _OpenAIWire()
        if self.api_key is not None and wire.key(request) != self.api_key:
            received = wire.key(request) or ""
            return self._error(wire, Script(status=401, error_message=wire.bad_key_message(received)), model)
        if script.status >= 400:
            return self._error(wire, script, model)
        return None

    def _lookup(self, request: web.Request) -> FakeResponse | web.Response:
        response_id = request.match_info["response_id"]
        found = self.responses.get(response_id)
        if found is not None:
            return found
        error = {
            "message": f"Response with id '{response_id}' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        return web.json_response({"error": error}, status=404)

    async def _responses_create(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        script = self._next_script()
        model = script.model or str(record.body.get("model", ""))
        refused = self._refused(request, script, model)
        if refused is not None:
            return refused
        if script.hang == "before_headers":
            await self._closing.wait()
            return web.Response(status=503)
        response = FakeResponse(f"resp_{uuid.uuid4().hex}", record.body, script, model)
        async with self._arrived:
            self.responses[response.id] = response
            self._arrived.notify_all()
        response._start(self.gate)
        if not record.body.get("stream"):
            await response.done.wait()
            return web.json_response(response.snapshot())
        # Without background mode the answer is tied to this connection, as in the real API.
        return await self._serve_events(
            record, request, script, response, after=-1, stop_on_leave=not response.background
        )

    async def _responses_retrieve(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        script = self._next_script()
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        refused = self._refused(request, script, found.model)
        if refused is not None:
            return refused
        if record.query.get("stream", "").lower() not in ("true", "1"):
            return web.json_response(found.snapshot())
        if script.hang == "before_headers":
            await self._closing.wait()
            return web.Response(status=503)
        after = int(record.query.get("starting_after", "-1"))
        return await self._serve_events(record, request, script, found, after=after, stop_on_leave=False)

    async def _responses_cancel(self, request: web.Request) -> web.Response:
        await self._record(request)
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        refused = self._refused(request, Script(), found.model)
        if refused is not None:
            return refused
        await found._cancel()
        if found.status != "cancelled":
            # Only a queued or in-progress response can be cancelled (cancelling a cancelled
            # one again is idempotent): an assumption, the API reference does not say.
            error = {
                "message": f"Cannot cancel a response with status '{found.status}'.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            return web.json_response({"error": error}, status=400)
        return web.json_response(found.snapshot())

    async def _serve_events(
        self,
        record: RecordedRequest,
        request: web.Request,
        script: Script,
        fake_response: FakeResponse,
        *,
        after: int,
        stop_on_leave: bool,
    ) -> web.StreamResponse:
        """Stream ``fake_response``'s events after sequence number ``after``, those already
        produced then the new ones as they come, until its end. ``script.drop_after`` aborts
        the connection after that many text deltas; the response goes on regardless (unless it
        is not a background one)."""
        response = web.StreamResponse(headers=_OpenAIWire().stream_headers())
        try:
            await response.prepare(request)
            deltas = 0
            while events := await fake_response.read(after):
                for event in events:
                    is_delta = event["type"] == "response.output_text.delta"
                    if is_delta and deltas == script.drop_after:
                        assert request.transport is not None
                        request.transport.abort()
                        record.disconnected.set()
                        if stop_on_leave:
                            await fake_response._stop("cancelled")
                        return response
                    await self._write(record, response, _sse(event), token=is_delta)
                    deltas += is_delta
                    after = event["sequence_number"]
            await response.write_eof()
            record.finished.set()
        except asyncio.CancelledError:
            # aiohttp cancels the handler when its client disconnects (handler_cancellation).
            record.disconnected.set()
            if stop_on_leave:
                await fake_response._stop("cancelled")
            raise
        except ConnectionResetError:
            record.disconnected.set()
            if stop_on_leave:
                await fake_response._stop("cancelled")
        return response

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


# -- reading a provider's stream in a test ---------------------------------------------


async def collect(stream: AsyncIterator[AIChunk]) -> list[AIChunk]:
    """Every chunk of a provider's stream."""
    return [chunk async for chunk in stream]


async def failure(stream: AsyncIterator[AIChunk]) -> ProviderError:
    """The :class:`ProviderError` a provider's stream ends with (the test fails without one)."""
    with pytest.raises(ProviderError) as caught:
        await collect(stream)
    return caught.value


class _Closable(Protocol):
    async def aclose(self) -> None: ...


P = TypeVar("P", bound=_Closable)


@asynccontextmanager
async def providers_of(
    kind: Callable[[ProviderSettings], P], **defaults: Any
) -> AsyncIterator[Callable[..., P]]:
    """A factory of ``kind`` providers with ``defaults`` (for the fake: no SDK retries and
    a short timeout unless asked), each closed on the way out."""
    made: list[P] = []

    def make(**overrides: Any) -> P:
        values = {"max_retries": 0, "request_timeout": 5.0, **defaults, **overrides}
        made.append(kind(ProviderSettings(**values)))
        return made[-1]

    try:
        yield make
    finally:
        for provider in made:
            await provider.aclose()
