"""A small HTTP/1.1 server on asyncio streams: JSON in, JSON out, keep-alive, limits, bearer auth, draining.

It exists so the daemon starts in milliseconds and imports nothing beyond the standard library.
Routes map (method, path) to `async handler(Request) -> Response`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MAX_HEADER_BYTES = 16 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data, separators=(",", ":"), allow_nan=False).encode())

    @classmethod
    def error(cls, status: int, message: str, error_type: str) -> Response:
        return cls.json({"error": message, "error_type": error_type}, status)


Handler = Callable[[Request], Awaitable[Response]]


class HttpError(Exception):
    """Raised by handlers: becomes {"error", "error_type"} with this status."""

    def __init__(self, status: int, message: str, error_type: str = "validation"):
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class HttpServer:
    def __init__(
        self,
        routes: dict[tuple[str, str], Handler],
        *,
        max_body_bytes: int = 1 << 20,
        api_key: str | None = None,
        public_paths: tuple[str, ...] = ("/health",),
        idle_timeout_s: float = 60.0,
        read_timeout_s: float = 30.0,
        on_response: Callable[[Request | None, int, float], None] | None = None,
    ):
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key.encode() if api_key else None
        self.public_paths = public_paths
        self.idle_timeout_s = idle_timeout_s
        self.read_timeout_s = read_timeout_s
        self.on_response = on_response
        self.draining = False
        self.busy = 0  # requests read and not yet answered
        self._idle: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, limit=MAX_HEADER_BYTES, backlog=1024
        )
        return self._server.sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        """Close the listening socket and idle connections; requests being handled still get answered."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._idle):
            writer.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not self.draining:
                self._idle.add(writer)
                try:
                    request = await self._read_request(reader, writer)
                except HttpError as e:
                    self._idle.discard(writer)
                    await self._write(
                        writer, Response.error(e.status, str(e), e.error_type), keep_alive=False
                    )
                    if self.on_response is not None:
                        self.on_response(None, e.status, 0.0)
                    return
                finally:
                    self._idle.discard(writer)
                if request is None:
                    return
                self.busy += 1
                try:
                    started = time.perf_counter()
                    response = await self._dispatch(request)
                    closing = request.headers.get("connection", "").lower() == "close"
                    keep_alive = not closing and not self.draining
                    await self._write(writer, response, keep_alive)
                    if self.on_response is not None:
                        self.on_response(request, response.status, time.perf_counter() - started)
                finally:
                    self.busy -= 1
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout_s)
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise HttpError(400, "incomplete request head") from None
            return None  # client closed between requests
        except asyncio.LimitOverrunError:
            raise HttpError(431, "request head too large") from None
        except asyncio.TimeoutError:
            return None
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise HttpError(400, "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise HttpError(505, f"{version} is not supported; speak HTTP/1.1")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(411, "chunked bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0:
            raise HttpError(400, "bad Content-Length")
        if length > self.max_body_bytes:
            raise HttpError(413, f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}")
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await asyncio.wait_for(reader.readexactly(length), self.read_timeout_s) if length else b""
        path, _, query = target.partition("?")
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        return Request(method.upper(), path, query, headers, body)

    def _authorized(self, request: Request) -> bool:
        if self.api_key is None or request.path in self.public_paths:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key)

    async def _dispatch(self, request: Request) -> Response:
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            allowed = [m for (m, p) in self.routes if p == request.path]
            if allowed:
                response = Response.error(
                    405, f"method {request.method} not allowed on {request.path}", "validation"
                )
                response.headers["Allow"] = ", ".join(allowed)
                return response
            return Response.error(404, f"no route {request.path}", "not_found")
        if not self._authorized(request):
            response = Response.error(
                401, "missing or wrong bearer token (Authorization: Bearer KEY)", "unauthorized"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        try:
            return await handler(request)
        except HttpError as e:
            return Response.error(e.status, str(e), e.error_type)
        except Exception as e:  # a bug must not kill the connection loop; report it as a 500 and log it
            print(f"sft-serve: internal error on {request.method} {request.path}:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return Response.error(500, f"internal error: {type(e).__name__}", "backend")

    async def _write(self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
        reason = HTTPStatus(response.status).phrase
        head = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()
