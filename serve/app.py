"""The daemon: HTTP -> request checks -> tokenization -> dynamic batcher -> onnxruntime, in TEI's shape.

Routes (every POST body is checked against the schema served at /openapi.json):
  POST /predict   classification bundles, TEI's /predict: a string -> one result, a list -> one result each
  POST /generate  causal-LM bundles, text-generation-inference's /generate
  POST /          the Hugging Face Inference API shape, what `InferenceClient(base_url=...)` posts
  POST /tokenize  tokens with character offsets (TEI's /tokenize)
  GET  /health /info /metrics /openapi.json
Errors are {"error", "error_type"}: 400 bad JSON or empty batch, 401, 413 too large, 422 schema or
tokenizer, 424 model failure, 429 overloaded, 503 not ready or draining.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from .batcher import Batcher
from .encoding import InputTooLong, TokenizerFailed
from .errors import ServeError
from .http import HttpError, HttpServer, Request, Response
from .metrics import ServeMetrics
from .openapi import document
from .validate import SchemaError, validate

GENERATION = "text-generation-with-past"
DEFAULT_NEW_TOKENS = 20
# TGI parameters this server does not implement: a request that turns one on gets a 422, not a silent no-op.
UNSUPPORTED_GENERATION = (
    "best_of",
    "decoder_input_details",
    "frequency_penalty",
    "grammar",
    "repetition_penalty",
    "top_n_tokens",
    "typical_p",
    "watermark",
    "adapter_id",
)
ENCODE_OFF_LOOP_CHARS = 16_384  # bigger requests are tokenized on a worker thread


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_tokens: int = 4096
    max_batch_requests: int = 64
    max_queue_delay_ms: float = 2.0
    max_concurrent_requests: int = 512
    max_client_batch_size: int = 256
    max_body_bytes: int = 2 << 20
    auto_truncate: bool = True
    api_key: str | None = None
    max_new_tokens: int = 256
    drain_timeout_s: float = 30.0


class App:
    def __init__(self, runner, options: ServeOptions):
        self.runner = runner
        self.options = options
        self.task = runner.task
        self.metrics = ServeMetrics(self)
        self.batcher = Batcher(
            runner.run,
            max_batch_tokens=options.max_batch_tokens,
            max_batch_requests=options.max_batch_requests,
            max_queue_delay_ms=options.max_queue_delay_ms,
            on_batch=self.metrics.record_batch,
        )
        self.openapi = document(
            self.task,
            model_id=str(runner.bundle.path),
            max_inputs=options.max_client_batch_size,
            max_new_tokens=options.max_new_tokens,
            auth=bool(options.api_key),
        )
        self.schemas = self.openapi["components"]["schemas"]
        self.ready = False
        self.in_flight = 0
        self.routes = {
            ("GET", "/health"): self.health,
            ("GET", "/info"): self.info,
            ("GET", "/metrics"): self.prometheus,
            ("GET", "/openapi.json"): self.openapi_json,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/"): self.inference_api,
        }
        if self.task == GENERATION:
            self.routes[("POST", "/generate")] = self.generate
        else:
            self.routes[("POST", "/predict")] = self.predict

    # -- request plumbing -------------------------------------------------------------------------

    def _body(self, request: Request, schema: str) -> dict[str, Any]:
        try:
            body = json.loads(request.body, parse_constant=_no_constants)
        except (ValueError, RecursionError) as e:
            raise HttpError(400, f"request body is not valid JSON ({str(e)[:80]})") from None
        if isinstance(body, dict) and isinstance(body.get("inputs"), list):
            if not body["inputs"]:
                raise HttpError(400, "inputs: the batch is empty", "empty")
            if len(body["inputs"]) > self.options.max_client_batch_size:
                raise HttpError(
                    413,
                    f"inputs: batch of {len(body['inputs'])} exceeds the limit of "
                    f"{self.options.max_client_batch_size} (--max-client-batch-size)",
                )
        try:
            return validate(body, self.schemas[schema], self.schemas)
        except SchemaError as e:
            raise HttpError(422, str(e)) from None

    def _admit(self) -> None:
        if not self.ready:
            raise HttpError(503, "not ready (starting or shutting down)", "unhealthy")
        if self.in_flight >= self.options.max_concurrent_requests:
            raise HttpError(
                429,
                f"overloaded: {self.in_flight} requests in flight (--max-concurrent-requests); retry later",
                "overloaded",
            )

    async def _encode(
        self, texts: list, truncate: bool, *, untruncated: bool = False, special_tokens: bool = True
    ) -> list:
        if untruncated:
            encode = functools.partial(
                self.runner.encoder.encode_untruncated, texts, special_tokens=special_tokens
            )
        else:
            encode = functools.partial(self.runner.encode, texts, truncate=truncate)
        try:
            chars = sum(len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in texts)
            if chars > ENCODE_OFF_LOOP_CHARS:
                return await asyncio.get_running_loop().run_in_executor(None, encode)
            return encode()
        except InputTooLong as e:
            raise HttpError(413, str(e)) from None
        except TokenizerFailed as e:
            raise HttpError(422, str(e), "tokenizer") from None

    async def _infer(
        self,
        texts: list,
        options: list[dict[str, Any]],
        truncate: bool | None,
        *,
        keep_last: int | None = None,
    ) -> list:
        self._admit()
        self.in_flight += 1
        try:
            encodings = await self._encode(
                texts, self.options.auto_truncate if truncate is None else truncate
            )
            for e in encodings if keep_last else ():
                if len(e.ids) > keep_last:
                    e.truncate(keep_last, direction="left")
            try:
                return await self.batcher.submit(encodings, options, [len(e.ids) for e in encodings])
            except Exception as e:
                raise HttpError(
                    424, f"model call failed: {type(e).__name__}: {str(e)[:200]}", "backend"
                ) from None
        finally:
            self.in_flight -= 1

    # -- inference routes -------------------------------------------------------------------------

    async def predict(self, request: Request) -> Response:
        body = self._body(request, "PredictRequest")
        single = isinstance(body["inputs"], str)
        results = await self._classify(body, [body["inputs"]] if single else body["inputs"])
        return Response.json(results[0] if single else results)

    async def _classify(self, body: dict[str, Any], inputs: list) -> list:
        params = body.get("parameters") or {}
        if self.task == "text-classification":
            texts = [tuple(t) if isinstance(t, list) else t for t in inputs]
            function = "none" if body.get("raw_scores") else params.get("function_to_apply")
            options = [{"function": function, "top_k": params.get("top_k")}] * len(texts)
        else:
            texts = inputs
            ignore = params.get("ignore_labels")
            options = [
                {
                    "text": t,
                    "aggregation_strategy": params.get("aggregation_strategy") or "simple",
                    "ignore_labels": ["O"] if ignore is None else ignore,
                }
                for t in texts
            ]
        return await self._infer(texts, options, body.get("truncate"))

    async def generate(self, request: Request) -> Response:
        return Response.json(await self._generate(self._body(request, "GenerateRequest")))

    async def _generate(self, body: dict[str, Any]) -> dict[str, Any]:
        from .generate import GenerationParams

        p = body.get("parameters") or {}
        unsupported = [name for name in UNSUPPORTED_GENERATION if p.get(name)]
        if unsupported:
            raise HttpError(422, f"parameters.{unsupported[0]}: not supported by this server")
        if body.get("stream") is True:
            raise HttpError(422, 'stream: streaming responses are not supported; send "stream": false')
        params = GenerationParams(
            max_new_tokens=p.get("max_new_tokens") or min(DEFAULT_NEW_TOKENS, self.options.max_new_tokens),
            do_sample=bool(p.get("do_sample")),
            temperature=_or(p.get("temperature"), 1.0),
            top_p=_or(p.get("top_p"), 1.0),
            top_k=_or(p.get("top_k"), 0),
            seed=p.get("seed"),
            stop=p.get("stop") or [],
        )
        # TGI's `truncate` keeps the last N prompt tokens; prompts over max_length follow --auto-truncate
        keep_last = p.get("truncate")
        result = (
            await self._infer(
                [body["inputs"]], [{"params": params}], True if keep_last else None, keep_last=keep_last
            )
        )[0]
        text = result["generated_text"]
        out: dict[str, Any] = {"generated_text": body["inputs"] + text if p.get("return_full_text") else text}
        if p.get("details"):
            out["details"] = result["details"]
        return out

    async def inference_api(self, request: Request) -> Response:
        body = self._body(request, "InferenceRequest")
        if self.task == GENERATION:
            return Response.json([await self._generate(body)])
        single = isinstance(body["inputs"], str)
        results = await self._classify(body, [body["inputs"]] if single else body["inputs"])
        if self.task == "token-classification" and single:
            return Response.json(results[0])
        return Response.json(results)  # text classification: always one list per input, as the HF API does

    async def tokenize(self, request: Request) -> Response:
        body = self._body(request, "TokenizeRequest")
        if not self.ready:
            raise HttpError(503, "not ready (starting or shutting down)", "unhealthy")
        texts = [body["inputs"]] if isinstance(body["inputs"], str) else body["inputs"]
        encodings = await self._encode(
            texts, True, untruncated=True, special_tokens=body.get("add_special_tokens", True)
        )
        out = []
        for text, e in zip(texts, encodings, strict=False):
            tokens = zip(e.ids, e.tokens, e.special_tokens_mask, e.offsets, strict=False)
            out.append(
                [
                    {
                        "id": i,
                        "text": token if special else text[start:stop],
                        "special": bool(special),
                        "start": None if special else start,
                        "stop": None if special else stop,
                    }
                    for i, token, special, (start, stop) in tokens
                ]
            )
        return Response.json(out)

    # -- operational routes -----------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.ready and self.batcher.alive:
            return Response.json({"status": "ok"})
        return Response.error(503, "unhealthy", "unhealthy")

    async def info(self, request: Request) -> Response:
        from importlib.metadata import version

        bundle, o = self.runner.bundle, self.options
        info = {
            "model_id": str(bundle.path),
            "model_sha": bundle.manifest["sha256"].get("model.onnx"),
            "task": self.task,
            "max_input_length": bundle.max_length,
            "max_concurrent_requests": o.max_concurrent_requests,
            "max_batch_tokens": o.max_batch_tokens,
            "max_batch_requests": o.max_batch_requests,
            "max_queue_delay_ms": o.max_queue_delay_ms,
            "max_client_batch_size": o.max_client_batch_size,
            "auto_truncate": o.auto_truncate,
            "providers": self.runner.model.providers,
            "threads": self.runner.model.threads,
            "version": version("sft-toolchain"),
            "onnxruntime": version("onnxruntime"),
        }
        if self.task == GENERATION:
            info["max_new_tokens"] = o.max_new_tokens
        else:
            id2label = dict(enumerate(bundle.labels))
            info["labels"] = bundle.labels
            info["problem_type"] = bundle.manifest.get("problem_type")
            info["model_type"] = {
                "classifier": {
                    "id2label": {str(k): v for k, v in id2label.items()},
                    "label2id": {v: k for k, v in id2label.items()},
                }
            }
        return Response.json(info)

    async def prometheus(self, request: Request) -> Response:
        return Response(200, self.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")

    async def openapi_json(self, request: Request) -> Response:
        return Response.json(self.openapi)


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _or(value, default):
    return default if value is None else value


async def serve(runner, options: ServeOptions, *, ready_message: bool = True) -> None:
    """Run until SIGTERM/SIGINT: then stop accepting, answer what was accepted, return."""
    app = App(runner, options)
    server = HttpServer(
        app.routes,
        max_body_bytes=options.max_body_bytes,
        api_key=options.api_key,
        on_response=app.metrics.record_request,
    )
    try:
        port = await server.start(options.host, options.port)
    except OSError as e:
        raise ServeError(
            f"--host {options.host} --port {options.port}: cannot listen there ({e.strerror or e})"
        ) from None
    app.batcher.start()
    app.ready = True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_message:
        if options.host not in ("127.0.0.1", "localhost", "::1") and not options.api_key:
            print(f"sft-serve: warning: listening on {options.host} without --api-key", file=sys.stderr)
        print(
            f"sft-serve: listening on http://{options.host}:{port} ({runner.task}, "
            f"{', '.join(runner.model.providers)})",
            file=sys.stderr,
            flush=True,
        )
    await stop.wait()
    app.ready = False
    server.stop_accepting()
    deadline = time.monotonic() + options.drain_timeout_s
    while server.busy and time.monotonic() < deadline:  # answer what was accepted
        await asyncio.sleep(0.01)
    left = server.busy
    await app.batcher.stop()
    if ready_message:
        print(
            f"sft-serve: stopped ({left} requests unanswered after the drain timeout)"
            if left
            else "sft-serve: stopped",
            file=sys.stderr,
            flush=True,
        )
