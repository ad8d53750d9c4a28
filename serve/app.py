"""The daemon: HTTP -> request checks -> dynamic batcher -> onnxruntime, in the shape of TEI's API.

Routes:
  POST /predict  {"inputs": "text" | ["text", ...] | [["text", "pair"], ...], "raw_scores": false}
                 -> one input: [{"label", "score"}, ...] (all labels, best first); a list: one such list each
  GET  /health   200 when the model is loaded and the batcher runs, else 503
  GET  /info     bundle facts (task, labels, max_length, versions, batching limits)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from .batcher import Batcher, QueueFull
from .http import HttpError, HttpServer, Request, Response
from .runtime import TextClassifier


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_inputs_per_request: int = 256
    max_body_bytes: int = 1 << 20
    threads: int | None = None
    drain_timeout_s: float = 30.0


class App:
    def __init__(self, classifier: TextClassifier, options: ServeOptions):
        self.classifier = classifier
        self.options = options
        self.batcher = Batcher(self._run_batch, max_batch_size=options.max_batch_size,
                               max_wait_ms=options.max_wait_ms, max_queue=options.max_queue)
        self.ready = False
        self.in_flight = 0
        self.routes = {
            ("POST", "/predict"): self.predict,
            ("GET", "/health"): self.health,
            ("GET", "/info"): self.info,
        }

    def _run_batch(self, items: list[tuple[Any, bool]]) -> list[Any]:
        # Items carry their own raw_scores flag; logits are computed once for the whole batch.
        texts = [text for text, _ in items]
        logits = self.classifier.logits(texts)
        probs = self.classifier.scores(logits)
        labels = self.classifier.labels
        out = []
        for (_, raw), row_logits, row_probs in zip(items, logits, probs):
            row = row_logits if raw else row_probs
            order = sorted(range(len(labels)), key=lambda i: -row[i])
            out.append([{"label": labels[i], "score": float(row[i])} for i in order])
        return out

    async def predict(self, request: Request) -> Response:
        body = _json_body(request)
        texts, single = parse_inputs(body.get("inputs"), self.options.max_inputs_per_request)
        raw = bool(body.get("raw_scores", False))
        top_k = (body.get("parameters") or {}).get("top_k") if isinstance(body.get("parameters"), dict) else None
        self.in_flight += 1
        try:
            results = await self.batcher.submit([(t, raw) for t in texts])
        except QueueFull:
            return Response.error(429, "queue full, retry later", "overloaded")
        finally:
            self.in_flight -= 1
        if isinstance(top_k, int) and top_k > 0:
            results = [r[:top_k] for r in results]
        return Response.json(results[0] if single else results)

    async def health(self, request: Request) -> Response:
        if self.ready:
            return Response.json({"status": "ok"})
        return Response.error(503, "model not ready", "unhealthy")

    async def info(self, request: Request) -> Response:
        m = self.classifier.bundle.manifest
        return Response.json({
            "model_id": str(self.classifier.bundle.path), "task": m["task"], "labels": m["labels"],
            "max_input_length": m["max_length"], "opset": m.get("opset"), "versions": m.get("versions", {}),
            "max_batch_size": self.options.max_batch_size, "max_wait_ms": self.options.max_wait_ms,
            "max_concurrent_requests": self.options.max_queue,
            "providers": self.classifier.session.get_providers(),
        })


def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HttpError(422, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(422, "request body must be a JSON object with an 'inputs' field")
    return body


def parse_inputs(inputs: Any, max_inputs: int) -> tuple[list[Any], bool]:
    """TEI inputs -> (texts, was_single). A text is a string or a [text, pair] list of two strings."""
    if isinstance(inputs, str):
        return [_check_text(inputs, 0)], True
    if isinstance(inputs, list) and inputs:
        if len(inputs) > max_inputs:
            raise HttpError(413, f"batch of {len(inputs)} inputs exceeds the limit of {max_inputs}")
        texts = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                texts.append(_check_text(item, i))
            elif isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item):
                texts.append((_check_text(item[0], i), _check_text(item[1], i)))
            else:
                raise HttpError(422, f"inputs[{i}] must be a string or a [text, text_pair] list")
        return texts, False
    raise HttpError(422, "'inputs' must be a non-empty string or a non-empty list of strings")


def _check_text(text: str, index: int) -> str:
    if not text.strip():
        raise HttpError(422, f"inputs[{index}] is empty")
    return text


async def serve(classifier: TextClassifier, options: ServeOptions, *, ready_message: bool = True) -> None:
    """Run until SIGTERM/SIGINT: then stop accepting, let in-flight requests finish, return."""
    app = App(classifier, options)
    server = HttpServer(app.routes, max_body_bytes=options.max_body_bytes)
    app.batcher.start()
    port = await server.start(options.host, options.port)
    app.ready = True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_message:
        print(f"sft-serve: listening on http://{options.host}:{port} "
              f"(labels: {', '.join(classifier.labels)})", file=sys.stderr, flush=True)
    await stop.wait()
    app.ready = False
    server.stop_accepting()
    deadline = time.monotonic() + options.drain_timeout_s
    while app.in_flight and time.monotonic() < deadline:  # finish what was accepted
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)  # let the last responses be written
    await app.batcher.stop()
