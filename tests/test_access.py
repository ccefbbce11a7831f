"""Who may do what (PROTOCOL.md, "Access"): JWT bearer tokens on every transport, owners
and viewers, 401 vs 403; and the browser origins allowed on every path (CORS).

Real server, real clients: aiohttp for HTTP, SSE and WebSockets, python-socketio's
AsyncClient on both Socket.IO paths (the direct WebSocket and long-polling)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.app import create_app
from tests.helpers import WAIT, LiveServer, make_settings, record_events, wait_until

SECRET = "test-secret-that-is-long-enough-for-hs256"
STOLEN = "sk-live-abcdefghijklmnopqrstuvwxyz0123456789"


def token(sub: str, *, key: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
async def secured(start_server) -> LiveServer:
    server: LiveServer = await start_server(auth_jwt_secret=SECRET, auth_jwt_audience="streaming")
    return server


async def close(client: socketio.AsyncClient) -> None:
    """Disconnect; a long-polling client drops its pending poll rather than wait for it (as
    a browser does; python-engineio's client would wait up to its read timeout)."""
    if client.connected and client.transport() == "polling":
        await client.eio.disconnect(abort=True)
    elif client.connected:
        await client.disconnect()


async def create(http: aiohttp.ClientSession, server: LiveServer, user: str, **config: Any) -> str:
    async with http.post(
        f"{server.url}/api/streaming/session",
        json={"userId": user, "config": {"maxTokens": 40, **config}},
        headers=bearer(token(user, aud="streaming")),
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["sessionId"])


async def status(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, Any, Any]:
    async with http.request(method, url, headers=headers or {}, **kw) as resp:
        return resp.status, await resp.json(), resp.headers


# -- HTTP --------------------------------------------------------------------


async def test_http_needs_a_valid_token(secured: LiveServer, http) -> None:
    url = f"{secured.url}/api/streaming/session"
    body = {"userId": "alice"}
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 3600, "aud": "streaming"}, SECRET)
    for headers in (
        {},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        bearer("not-a-jwt"),
        bearer(token("alice", key="another-secret-entirely-32-bytes!!", aud="streaming")),
        bearer(token("alice", aud="another-audience")),
        bearer(token("alice")),  # no audience
        bearer(expired),
        bearer(jwt.encode({"aud": "streaming", "exp": int(time.time()) + 60}, SECRET)),  # no sub
    ):
        code, answer, response_headers = await status(http, "POST", url, headers, json=body)
        assert (code, answer) == (401, {"error": "Unauthorized"}), headers
        assert response_headers["WWW-Authenticate"] == "Bearer"
    code, answer, _ = await status(http, "POST", url, bearer(token("alice", aud="streaming")), json=body)
    assert code == 200, answer
    # Health stays open: it is how a load balancer knows the process is up.
    code, _, _ = await status(http, "GET", f"{secured.url}/healthz")
    assert code == 200


async def test_only_the_owner_starts_and_cancels_and_viewers_need_leave(secured: LiveServer, http) -> None:
    alice, bob = token("alice", aud="streaming"), token("bob", aud="streaming")
    watcher = token("carol", aud="streaming", view=["alice"])
    # A userId that is not the token's subject: refused.
    code, answer, _ = await status(
        http, "POST", f"{secured.url}/api/streaming/session", bearer(bob), json={"userId": "alice"}
    )
    assert (code, answer) == (403, {"error": "Forbidden"})
    session_id = await create(http, secured, "alice")
    base = f"{secured.url}/api/streaming/{session_id}"
    prompt = {"prompt": "Explain streaming"}
    assert (await status(http, "POST", f"{base}/start", bearer(bob), json=prompt))[:2] == (
        403,
        {"error": "Forbidden"},
    )
    assert (await status(http, "POST", f"{base}/start", bearer(watcher), json=prompt))[0] == 403
    assert (await status(http, "GET", base, bearer(bob)))[0] == 403
    assert (await status(http, "GET", f"{base}/chunks", bearer(bob)))[0] == 403
    assert (await status(http, "GET", base))[0] == 401
    assert (await status(http, "POST", f"{base}/start", bearer(alice), json=prompt))[0] == 200
    assert (await status(http, "GET", base, bearer(watcher)))[0] == 200
    assert (await status(http, "GET", base, bearer(alice)))[0] == 200
    assert (await status(http, "POST", f"{base}/cancel", bearer(watcher)))[0] == 403
    code, answer, _ = await status(http, "POST", f"{base}/cancel", bearer(alice))
    assert code in (200, 409), answer  # 409: it may have finished already


async def test_sse_and_the_plain_websocket_take_the_token_in_the_query(secured: LiveServer, http) -> None:
    session_id = await create(http, secured, "alice")
    alice = token("alice", aud="streaming")
    async with http.post(
        f"{secured.url}/api/streaming/{session_id}/start", json={"prompt": "x"}, headers=bearer(alice)
    ) as resp:
        assert resp.status == 200
    events = f"{secured.url}/api/streaming/{session_id}/events"
    async with http.get(events) as resp:
        assert resp.status == 401
    async with http.get(events, params={"token": token("bob", aud="streaming")}) as resp:
        assert resp.status == 403
    async with http.get(events, params={"token": alice}) as resp:
        assert resp.status == 200
        assert b"event: complete" in await resp.read()
    ws_url = f"{secured.url}/ws/stream/{session_id}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url)
    assert refused.value.status == 401
    watcher = token("carol", aud="streaming", view=["alice"])
    async with http.ws_connect(ws_url, params={"token": watcher}) as ws:
        await ws.send_json({"type": "pause"})
        async for msg in ws:
            frame = msg.json()
            if frame["type"] == "ack":
                assert frame == {"type": "ack", "action": "pause", "ok": False, "error": "Forbidden"}
                break


# -- Socket.IO, on both paths --------------------------------------------------


async def refusal(url: str, namespace: str, auth: dict[str, Any] | None) -> Any:
    """Connect over the direct WebSocket and expect a refusal: the ``connect_error`` data."""
    client = socketio.AsyncClient(reconnection=False)
    refused: list[Any] = []
    client.on("connect_error", refused.append, namespace=namespace)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            url, namespaces=[namespace], transports=["websocket"], auth=auth, wait_timeout=WAIT
        )
    await client.disconnect()
    return refused[0] if refused else None


async def polling_refusal(
    http: aiohttp.ClientSession, url: str, namespace: str, auth: dict[str, Any] | None
) -> Any:
    """The same over Engine.IO long-polling, spoken on the wire: OPEN, then CONNECT with
    ``auth``, then the CONNECT_ERROR packet's data."""
    endpoint = f"{url}/socket.io/?EIO=4&transport=polling"
    async with http.get(endpoint) as resp:
        sid = json.loads((await resp.text())[1:])["sid"]
    connect = f"40{'' if namespace == '/' else namespace + ','}{json.dumps(auth) if auth else ''}"
    async with http.post(f"{endpoint}&sid={sid}", data=connect) as resp:
        assert resp.status == 200
    async with http.get(f"{endpoint}&sid={sid}") as resp:
        packet = await resp.text()
    prefix = "44" if namespace == "/" else f"44{namespace},"
    assert packet.startswith(prefix), packet
    async with http.post(f"{endpoint}&sid={sid}", data="1") as resp:  # Engine.IO CLOSE
        assert resp.status == 200
    return json.loads(packet[len(prefix) :])


async def test_socketio_handshakes_need_a_token(secured: LiveServer, http) -> None:
    session_id = await create(http, secured, "alice")
    for namespace in ("/", f"/stream/{session_id}"):
        for auth in (None, {"token": "nonsense"}, {"token": token("alice", aud="elsewhere")}):
            assert await refusal(secured.url, namespace, auth) == {"message": "Unauthorized"}
            assert await polling_refusal(http, secured.url, namespace, auth) == {"message": "Unauthorized"}
    bob = {"token": token("bob", aud="streaming")}
    assert await refusal(secured.url, f"/stream/{session_id}", bob) == {"message": "Forbidden"}
    assert await polling_refusal(http, secured.url, f"/stream/{session_id}", bob) == {"message": "Forbidden"}


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_owner_controls_and_a_viewer_with_leave_watches(
    secured: LiveServer, http, transport: str
) -> None:
    session_id = await create(http, secured, "alice", maxTokens=400, tokensPerSecond=200)
    namespace = f"/stream/{session_id}"
    clients: list[socketio.AsyncClient] = []

    async def connect(auth_token: str, namespaces: list[str]) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False)
        clients.append(client)
        await client.connect(
            secured.url,
            namespaces=namespaces,
            transports=[transport],
            auth={"token": auth_token},
            wait_timeout=WAIT,
        )
        return client

    try:
        owner = await connect(token("alice", aud="streaming"), ["/"])
        stranger = await connect(token("bob", aud="streaming"), ["/"])
        watcher_client = socketio.AsyncClient(reconnection=False)
        clients.append(watcher_client)
        watched = record_events(watcher_client, namespace)
        await watcher_client.connect(
            secured.url,
            namespaces=[namespace],
            transports=[transport],
            auth={"token": token("carol", aud="streaming", view=["alice"])},
            wait_timeout=WAIT,
        )
        assert await stranger.call("join-stream", {"sessionId": session_id}, timeout=WAIT) == {
            "ok": False,
            "error": "Forbidden",
        }
        assert await stranger.call("pause-stream", {"sessionId": session_id}, timeout=WAIT) == {
            "ok": False,
            "error": "Forbidden",
        }
        async with http.post(
            f"{secured.url}/api/streaming/{session_id}/start",
            json={"prompt": "x"},
            headers=bearer(token("alice", aud="streaming")),
        ) as resp:
            assert resp.status == 200
        await watched.wait_for(lambda: len(watched.chunks) >= 3)
        ack = await watcher_client.call("pause-stream", namespace=namespace, timeout=WAIT)
        assert ack == {"ok": False, "error": "Forbidden"}
        ack = await owner.call("pause-stream", {"sessionId": session_id}, timeout=WAIT)
        assert ack["ok"] is True and ack["state"] == "paused"
        ack = await owner.call("join-stream", {"sessionId": session_id}, timeout=WAIT)
        assert ack["ok"] is True
        assert (await owner.call("cancel-stream", {"sessionId": session_id}, timeout=WAIT))["ok"] is True
        await watched.wait_finished()
    finally:
        for client in clients:
            await close(client)


async def test_an_expired_token_keeps_its_live_connection_but_cannot_reconnect(start_server, http) -> None:
    server = await start_server(auth_jwt_secret=SECRET, auth_jwt_leeway=0)
    alice = token("alice")
    async with http.post(
        f"{server.url}/api/streaming/session",
        json={"userId": "alice", "config": {"maxTokens": 4000, "tokensPerSecond": 100}},
        headers=bearer(alice),
    ) as resp:
        session_id = (await resp.json())["sessionId"]
    short = jwt.encode({"sub": "alice", "exp": int(time.time()) + 2}, SECRET)
    namespace = f"/stream/{session_id}"
    client = socketio.AsyncClient(reconnection=False)
    recorder = record_events(client, namespace)
    await client.connect(server.url, namespaces=[namespace], transports=["websocket"], auth={"token": short})
    try:
        async with http.post(
            f"{server.url}/api/streaming/{session_id}/start", json={"prompt": "x"}, headers=bearer(alice)
        ) as resp:
            assert resp.status == 200
        expiry = jwt.decode(short, options={"verify_signature": False})["exp"]
        await wait_until(lambda: time.time() > expiry + 1, timeout=WAIT)  # the clock is the condition
        seen = len(recorder.chunks)
        await recorder.wait_for(lambda: len(recorder.chunks) > seen + 3)
        assert recorder.errors == []
        again = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await again.connect(
                server.url, namespaces=[namespace], transports=["websocket"], auth={"token": short}
            )
        await again.disconnect()
    finally:
        await client.disconnect()


async def test_public_key_tokens(start_server, http) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    server = await start_server(auth_jwt_public_key=public_pem, auth_jwt_issuer="https://app.example")
    url = f"{server.url}/api/streaming/session"
    good = token("alice", key=private, algorithm="ES256", iss="https://app.example")  # type: ignore[arg-type]
    assert (await status(http, "POST", url, bearer(good), json={"userId": "alice"}))[0] == 200
    wrong_issuer = token("alice", key=private, algorithm="ES256", iss="https://evil.example")  # type: ignore[arg-type]
    assert (await status(http, "POST", url, bearer(wrong_issuer), json={"userId": "alice"}))[0] == 401
    # An HS256 token "signed" with the public key itself must not pass (algorithm confusion).
    forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "x" * 32, algorithm="HS256")
    assert (await status(http, "POST", url, bearer(forged), json={"userId": "alice"}))[0] == 401


async def test_tokens_never_reach_the_logs(start_server, http, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_server(auth_jwt_secret=SECRET, openai_api_key=STOLEN)
    alice = token("alice")
    bad = alice[:-4] + "AAAA"
    await status(http, "POST", f"{server.url}/api/streaming/session", bearer(bad), json={"userId": "alice"})
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(server.url, transports=["websocket"], auth={"token": bad}, wait_timeout=WAIT)
    await client.disconnect()
    session_id = await create_with(http, server, alice)
    async with http.post(
        f"{server.url}/api/streaming/{session_id}/start", json={"prompt": "x"}, headers=bearer(alice)
    ) as resp:
        assert resp.status == 200
    for secret in (SECRET, alice, bad, STOLEN, alice.split(".")[2]):
        assert secret not in caplog.text


async def create_with(http: aiohttp.ClientSession, server: LiveServer, bearer_token: str) -> str:
    async with http.post(
        f"{server.url}/api/streaming/session", json={"userId": "alice"}, headers=bearer(bearer_token)
    ) as resp:
        return str((await resp.json())["sessionId"])


def test_binding_beyond_loopback_with_access_open_warns(caplog) -> None:
    caplog.set_level(logging.WARNING)
    create_app(make_settings(host="0.0.0.0"))
    warnings = [r for r in caplog.records if "AUTH_JWT" in r.getMessage()]
    assert len(warnings) == 1
    caplog.clear()
    create_app(make_settings(host="127.0.0.1"))
    create_app(make_settings(host="0.0.0.0", auth_jwt_secret=SECRET))
    assert not [r for r in caplog.records if "AUTH_JWT" in r.getMessage()]


# -- origins -------------------------------------------------------------------


async def test_a_disallowed_origin_is_refused_on_every_path(server: LiveServer, http) -> None:
    session_id = await create_open(http, server)
    evil = {"Origin": "http://evil.example"}
    for method, path in (
        ("GET", "/healthz"),
        ("POST", "/api/streaming/session"),
        ("GET", f"/api/streaming/{session_id}"),
        ("GET", f"/api/streaming/{session_id}/events"),
        ("GET", "/socket.io/?EIO=4&transport=polling"),
        ("OPTIONS", "/api/streaming/session"),
    ):
        headers = {**evil, "Access-Control-Request-Method": "POST"} if method == "OPTIONS" else evil
        async with http.request(method, f"{server.url}{path}", headers=headers, json=None) as resp:
            assert resp.status == 403, path
            assert await resp.json() == {"error": "Origin not allowed"}
    for path in ("/socket.io/?EIO=4&transport=websocket", f"/ws/stream/{session_id}"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{server.url}{path}", headers=evil)
        assert refused.value.status == 403, path
    client = socketio.AsyncClient(reconnection=False)
    for transport in ("websocket", "polling"):
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(server.url, transports=[transport], headers=evil, wait_timeout=WAIT)
        await client.disconnect()


async def test_the_servers_own_origin_and_the_listed_ones_are_allowed(server: LiveServer, http) -> None:
    session_id = await create_open(http, server)
    for origin in (server.url, "http://localhost:5173"):
        async with http.get(f"{server.url}/api/streaming/{session_id}", headers={"Origin": origin}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == origin
        async with http.ws_connect(
            f"{server.url}/socket.io/?EIO=4&transport=websocket", headers={"Origin": origin}
        ) as ws:
            assert (await ws.receive_str()).startswith("0{")
        for transport in ("websocket", "polling"):
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(
                server.url, transports=[transport], headers={"Origin": origin}, wait_timeout=WAIT
            )
            await close(client)


async def test_any_origin_only_when_set_so(start_server, http) -> None:
    server = await start_server(cors_origins=["*"])
    async with http.get(f"{server.url}/healthz", headers={"Origin": "http://anything.example"}) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"


async def create_open(http: aiohttp.ClientSession, server: LiveServer) -> str:
    async with http.post(f"{server.url}/api/streaming/session", json={"userId": "u"}) as resp:
        return str((await resp.json())["sessionId"])


async def test_tokens_in_the_query_do_not_count_for_plain_http(secured: LiveServer, http) -> None:
    session_id = await create(http, secured, "alice")
    alice = token("alice", aud="streaming")
    async with http.get(f"{secured.url}/api/streaming/{session_id}", params={"token": alice}) as resp:
        assert resp.status == 401
