"""Serving the app: an ``AppRunner`` that lets :mod:`server.transports.sio_direct` see each
connection first, and the process's run loop (``python -m server``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from typing import cast

from aiohttp import web

from server.app import HANDLERS_SHARE, direct_hub_key, drain
from server.transports.http_api import settings_key
from server.transports.ops_api import draining_key

log = logging.getLogger(__name__)

#: The cyclic garbage collector's thresholds for the serving process. CPython's default
#: (700, 10, 10) ran 954 young and 8 full collections while 3,250 sessions streamed at
#: 40 tokens/s: 2.2 s of the run, with full collections of about 150 ms each. With these,
#: 10 young collections and no full one (bench (d), ``gc.callbacks`` timings).
GC_THRESHOLDS = (50_000, 20, 100)


class StreamingAppRunner(web.AppRunner):
    """``web.AppRunner`` whose sites start every connection with the direct Socket.IO
    handshake check; what it does not take goes to aiohttp as usual."""

    @property
    def server(self) -> web.Server | None:
        http = super().server
        hub = self.app.get(direct_hub_key)
        if http is None or hub is None:
            return http
        # Sites only call the factory, once per connection.
        return cast(web.Server, hub.protocol_factory(http))


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    on_ready: Callable[[], None],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (as ``web.run_app``)."""
    # Everything imported so far lives as long as the process: keep it out of collections.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, host, port, shutdown_timeout, on_ready))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


async def _serve(
    app: web.Application, host: str, port: int, shutdown_timeout: float, on_ready: Callable[[], None]
) -> None:
    runner = StreamingAppRunner(
        app,
        handle_signals=True,
        # In-flight HTTP handlers get their share, after the graceful steps (server.app).
        shutdown_timeout=shutdown_timeout * HANDLERS_SHARE,
        keepalive_timeout=app[settings_key].keepalive_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        on_ready()
        await asyncio.Event().wait()
    finally:
        # /readyz answers 503 from here on (the listener closes next).
        draining = app.get(draining_key)
        if draining is not None:
            draining.set()
        try:
            # The streams end while the listener still takes connections (a long-polling
            # client comes back for its last packets); then it closes.
            # SHUTDOWN_TIMEOUT holds, however busy the process was: what is not done by
            # then is dropped (in Redis mode, the others take over what this one owned).
            async with asyncio.timeout(shutdown_timeout):
                await drain(app)
                await runner.cleanup()
        except TimeoutError:
            log.warning("shutdown took SHUTDOWN_TIMEOUT (%gs): stopping now", shutdown_timeout)
