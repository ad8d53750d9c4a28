"""A small HTTP/1.1 server on asyncio streams: JSON in, JSON out, keep-alive, size limits.

It exists so the daemon starts in milliseconds and imports nothing beyond the standard library.
Routes map (method, path) to `async handler(Request) -> Response`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Awaitable, Callable

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
    def json(cls, data: Any, status: int = 200) -> "Response":
        return cls(status, json.dumps(data, separators=(",", ":")).encode())

    @classmethod
    def error(cls, status: int, message: str, error_type: str) -> "Response":
        return cls.json({"error": message, "error_type": error_type}, status)


Handler = Callable[[Request], Awaitable[Response]]


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HttpServer:
    def __init__(self, routes: dict[tuple[str, str], Handler], *, max_body_bytes: int = 1 << 20):
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve_connection, host, port, limit=MAX_HEADER_BYTES)
        return self._server.sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections finish their current request."""
        if self._server is not None:
            self._server.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await self._read_request(reader)
                except HttpError as e:
                    await self._write(writer, Response.error(e.status, str(e), "validation"), keep_alive=False)
                    return
                if request is None:
                    return
                keep_alive = request.headers.get("connection", "").lower() != "close"
                response = await self._dispatch(request)
                await self._write(writer, response, keep_alive)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise HttpError(400, "incomplete request head") from None
            return None  # client closed between requests
        except asyncio.LimitOverrunError:
            raise HttpError(431, "request head too large") from None
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise HttpError(400, "malformed request line") from None
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            raise HttpError(411, "chunked bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0:
            raise HttpError(400, "bad Content-Length")
        if length > self.max_body_bytes:
            raise HttpError(413, f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}")
        body = await reader.readexactly(length) if length else b""
        path, _, query = target.partition("?")
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        return Request(method.upper(), path, query, headers, body)

    async def _dispatch(self, request: Request) -> Response:
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            allowed = [m for (m, p) in self.routes if p == request.path]
            if allowed:
                return Response.error(405, f"method {request.method} not allowed on {request.path}", "validation")
            return Response.error(404, f"no route {request.path}", "not_found")
        try:
            return await handler(request)
        except HttpError as e:
            return Response.error(e.status, str(e), "validation")
        except Exception as e:  # a bug must not kill the connection loop; report it as a 500
            return Response.error(500, f"{type(e).__name__}: {e}", "backend")

    async def _write(self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
        reason = HTTPStatus(response.status).phrase
        head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()
