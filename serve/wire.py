"""What the daemon's handlers take and give: a read request, a response, and the error that becomes one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from .schemas import RequestError

_encode = msgspec.json.Encoder().encode


class HttpError(RequestError):
    """Raised by handlers: becomes {"error", "error_type"} with this status."""


@dataclass
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # route parameters, e.g. the model name


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, _encode(data))

    @classmethod
    def error(cls, status: int, message: str, error_type: str) -> Response:
        return cls.json({"error": message, "error_type": error_type}, status)
