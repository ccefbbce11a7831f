"""Fixtures of collaborative documents (a conftest plugin): a server with its document
rooms (``start_collab``, ``collab``) and collaborators, each one ``tests/collab_client.mjs``
(the npm ``y-websocket`` provider in Node, every document it sees checked against
StarterKit's schema)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.collab.rooms import DocumentRooms
from server.transports.collab_api import collab_rooms_key
from tests.helpers import WAIT, StreamingTestServer, make_settings

CLIENT = Path(__file__).with_name("collab_client.mjs")


@dataclass
class Collab:
    """A running server: its URLs and its document rooms."""

    url: str
    server: StreamingTestServer

    @property
    def ws(self) -> str:
        return "ws" + self.url[len("http") :] + "/collab"

    @property
    def rooms(self) -> DocumentRooms:
        return self.server.app[collab_rooms_key]

    async def close(self) -> None:
        await self.server.close()


StartCollab = Callable[..., Awaitable[Collab]]


@pytest.fixture
async def start_collab() -> AsyncIterator[StartCollab]:
    started: list[Collab] = []

    async def start(document_store: Any = None, **overrides: Any) -> Collab:
        overrides.setdefault("collab_store", "memory")
        app = create_app(make_settings(**overrides), document_store=document_store)
        server = StreamingTestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        collab = Collab(str(server.make_url("")).rstrip("/"), server)
        started.append(collab)
        return collab

    yield start
    for collab in reversed(started):
        await collab.close()


@pytest.fixture
async def collab(start_collab: StartCollab) -> Collab:
    return await start_collab()


@dataclass
class Collaborator:
    """One ``tests/collab_client.mjs``: commands in, events out (all kept in ``events``)."""

    process: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: int = 0

    @classmethod
    async def join(
        cls,
        collab: Collab | str,
        document_id: str,
        *,
        token: str | None = None,
        reconnect: bool = True,
        synced: bool = True,
    ) -> Collaborator:
        ws = collab if isinstance(collab, str) else collab.ws
        args = [str(CLIENT), ws, document_id, "--validate"]
        if token is not None:
            args += ["--token", token]
        if not reconnect:
            args.append("--no-reconnect")
        process = await asyncio.create_subprocess_exec(
            "node", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24
        )
        client = cls(process)
        client._reader = asyncio.get_running_loop().create_task(client._read())
        if synced:
            await client.command("wait", synced=True)
        return client

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.append(json.loads(line))
            self.changed.set()

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self.changed.clear()
                await self.changed.wait()

    async def command(self, op: str, **args: Any) -> dict[str, Any]:
        self._ids += 1
        ident = self._ids
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"id": ident, "op": op, **args}) + "\n").encode())
        await self.process.stdin.drain()
        reply = await self.wait_event(lambda e: e.get("id") == ident and e["event"] in ("done", "failed"))
        assert reply["event"] == "done", reply
        return reply

    async def dump(self) -> dict[str, Any]:
        return await self.command("dump")

    def problems(self) -> list[dict[str, Any]]:
        """What must never happen: an exception (yjs's "Unexpected case") or a document
        StarterKit's schema does not accept."""
        return [e for e in self.events if e["event"] in ("error", "invalid")]

    async def leave(self) -> None:
        if self.process.returncode is None:
            await self.command("close")
        await self.process.wait()

    def kill(self) -> None:
        self.process.kill()


@pytest.fixture
async def collaborators() -> AsyncIterator[Callable[..., Awaitable[Collaborator]]]:
    joined: list[Collaborator] = []

    async def join(collab: Collab | str, document_id: str, **options: Any) -> Collaborator:
        client = await Collaborator.join(collab, document_id, **options)
        joined.append(client)
        return client

    yield join
    for client in joined:
        if client.process.returncode is None:
            client.kill()
            await client.process.wait()
        assert not client.problems(), client.problems()
