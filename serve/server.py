"""Running the app (serve.app) on uvicorn with httptools: TLS, keep-alive, timeouts, SIGTERM drain.

uvicorn times out idle keep-alive connections but not a client that opens a connection and never finishes
its headers (or its body): the protocol subclass here drops those after --header-timeout / --body-timeout,
so a slow client holds one socket for a bounded time and never delays anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .app import App
from .errors import ServeError
from .options import ServeOptions

BACKLOG = 2048


def protocol_class(header_timeout: float, body_timeout: float) -> type:
    class Protocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline for each request's headers and for its body."""

        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm(header_timeout)  # a connection that never sends a request is dropped too

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(header_timeout)

        def on_headers_complete(self) -> None:
            self._arm(body_timeout)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Protocol


class _Server(uvicorn.Server):
    """uvicorn's server, with SIGTERM/SIGINT turning the app not-ready before the drain begins (uvicorn's
    own handlers would re-raise the signal at the end, and the process must exit 0 after a drain)."""

    def __init__(self, config: uvicorn.Config, app: App):
        super().__init__(config)
        self.sft_app = app

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self.sft_app.ready = False
        if self.should_exit:
            self.force_exit = True  # a second signal: stop waiting
        self.should_exit = True


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.listen(BACKLOG)  # listening before "listening on" is printed; uvicorn accepts from it once started
    return sock


def serve(runner, options: ServeOptions, *, ready_message: bool = True) -> None:
    """Serve until SIGTERM/SIGINT: then stop accepting, answer what was accepted, return."""
    asyncio.run(serve_async(runner, options, ready_message=ready_message))


async def serve_async(runner, options: ServeOptions, *, ready_message: bool = True) -> None:
    app = App(runner, options)
    sock = listen(options.host, options.port)
    config = uvicorn.Config(
        app,
        http=protocol_class(options.header_timeout, options.body_timeout),
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        backlog=BACKLOG,
        timeout_keep_alive=options.keep_alive_timeout,
        timeout_graceful_shutdown=options.drain_timeout,
        ssl_certfile=str(options.ssl_certfile) if options.ssl_certfile else None,
        ssl_keyfile=str(options.ssl_keyfile) if options.ssl_keyfile else None,
    )
    try:
        config.load()  # reads the TLS files now, so a bad one is a clean error
    except (OSError, ValueError) as e:
        sock.close()
        raise ServeError(f"--ssl-certfile/--ssl-keyfile: cannot use them ({e})") from None
    server = _Server(config, app)
    app.batcher.start()
    app.ready = True
    if ready_message:
        scheme = "https" if options.ssl_certfile else "http"
        port = sock.getsockname()[1]
        if options.host not in ("127.0.0.1", "localhost", "::1") and not options.api_key:
            print(f"sft-serve: warning: listening on {options.host} without --api-key", file=sys.stderr)
        print(
            f"sft-serve: listening on {scheme}://{options.host}:{port} ({runner.task}, "
            f"{', '.join(runner.model.providers)}; model name {app.model_name!r} on /v2)",
            file=sys.stderr,
            flush=True,
        )
    try:
        await server.serve(sockets=[sock])
    finally:
        app.ready = False
        left = app.in_flight
        await app.batcher.stop()
    if ready_message:
        print(
            f"sft-serve: stopped ({left} requests unanswered after the drain timeout)"
            if left
            else "sft-serve: stopped",
            file=sys.stderr,
            flush=True,
        )
