"""The daemon's ASGI app: request checks -> tokenization -> dynamic batcher -> onnxruntime, in TEI's shape
and the Open Inference Protocol's (serve.oip). serve.server runs it on uvicorn.

Routes (every POST body is decoded into the msgspec types of serve.schemas, which also make the document
served at /openapi.json):
  POST /predict   classification bundles, TEI's /predict: a string -> one result, a list -> one result each
  POST /generate  causal-LM bundles, text-generation-inference's /generate
  POST /          the Hugging Face Inference API shape, what `InferenceClient(base_url=...)` posts
  POST /tokenize  tokens with character offsets (TEI's /tokenize)
  GET  /health /info /metrics /openapi.json
  /v2/...         Open Inference Protocol v2 (KServe, Triton): health, model metadata, infer
Errors are {"error", "error_type"}: 400 bad JSON or empty batch, 401, 404, 405, 413 too large, 422 schema
or tokenizer, 424 model failure, 429 overloaded, 503 not ready or draining.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .batcher import Batcher
from .bundle import IMAGE_TASK, QA_TASK, SEQ2SEQ_TASK
from .encoding import InputTooLong, TokenizerFailed
from .metrics import ServeMetrics
from .oip import OipRoutes
from .openapi import document
from .options import ServeOptions
from .schemas import GENERATION, RequestError, api_types, decode
from .wire import HttpError, Request, Response

ENCODE_OFF_LOOP_CHARS = 16_384  # bigger requests are tokenized on a worker thread
PUBLIC_PATHS = ("/health", "/v2/health/live", "/v2/health/ready")  # probes need no token
_json = msgspec.json.Encoder().encode


Handler = Callable[[Request], Awaitable[Response]]


class App:
    def __init__(self, runner, options: ServeOptions):
        self.runner = runner
        self.options = options
        self.task = runner.task
        self.metrics = ServeMetrics(self)
        self.batcher = Batcher(
            runner.run,
            max_batch_tokens=options.batch_tokens(runner.model.on_cuda),
            max_batch_requests=options.max_batch_requests,
            max_queue_delay_ms=options.max_queue_delay_ms,
            on_batch=self.metrics.record_batch,
        )
        self.model_name = options.model_name or runner.bundle.path.resolve().name
        # image, QA and text2text bodies are checked by their handlers; their types document them
        types = api_types(
            self.task, max_inputs=options.max_client_batch_size, max_new_tokens=options.max_new_tokens
        )
        self.decoders = {n: msgspec.json.Decoder(t) for n, t in types.items() if n.endswith("Request")}
        self.openapi = document(
            self.task, types, model_id=str(runner.bundle.path), auth=bool(options.api_key)
        )
        self.openapi_body = _json(self.openapi)
        self.api_key = options.api_key.encode() if options.api_key else None
        self.ready = False
        self.in_flight = 0
        self.oip = OipRoutes(self)
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self.health,
            ("GET", "/info"): self.info,
            ("GET", "/metrics"): self.prometheus,
            ("GET", "/openapi.json"): self.openapi_json,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/"): self.inference_api,
            **self.oip.routes,
        }
        if self.task == SEQ2SEQ_TASK:
            self.routes[("POST", "/generate")] = self.generate_seq2seq
            self.routes[("POST", "/")] = self.inference_api_seq2seq
            del self.routes[("POST", "/tokenize")], self.routes[("POST", "/v2/models/{name}/infer")]
        elif self.task == GENERATION:
            self.routes[("POST", "/generate")] = self.generate
        elif self.task == IMAGE_TASK:
            self.routes[("POST", "/predict")] = self.routes[("POST", "/")] = self.predict_images
            del self.routes[("POST", "/tokenize")], self.routes[("POST", "/v2/models/{name}/infer")]
        elif self.task == QA_TASK:
            self.routes[("POST", "/predict")] = self.routes[("POST", "/")] = self.answer
            del self.routes[("POST", "/v2/models/{name}/infer")]
        else:
            self.routes[("POST", "/predict")] = self.predict
        self.paths = {path for _, path in self.routes}

    # -- ASGI ---------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        route, response = await self._respond(scope, receive)
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(response.body)).encode()),
            *response.headers,
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        self.metrics.record_request(route, response.status, time.perf_counter() - started)

    async def _respond(self, scope, receive) -> tuple[str, Response]:
        method, path = scope["method"], scope["path"]
        route, params = self._route(path)
        handler = self.routes.get((method, route)) if route else None
        if handler is None:
            if route is None:
                return "other", Response.error(404, f"no route {path}", "not_found")
            allowed = ", ".join(m for (m, p) in self.routes if p == route)
            response = Response.error(405, f"method {method} not allowed on {path}", "validation")
            response.headers.append((b"allow", allowed.encode()))
            return route, response
        headers = dict(scope["headers"])
        if not self._authorized(route, headers):
            response = Response.error(
                401, "missing or wrong bearer token (Authorization: Bearer KEY)", "unauthorized"
            )
            response.headers.append((b"www-authenticate", b"Bearer"))
            return route, response
        try:
            body = await self._read_body(headers, receive) if method == "POST" else b""
            return route, await handler(Request(method, path, headers, body, params))
        except RequestError as e:
            return route, Response.error(e.status, str(e), e.error_type)
        except Exception as e:  # a bug must not kill the connection; report it as a 500 and log it
            print(f"sft-serve: internal error on {method} {path}:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return route, Response.error(500, f"internal error: {type(e).__name__}", "backend")

    def _route(self, path: str) -> tuple[str | None, dict[str, str]]:
        """The route template of `path` and its parameters; None when no route has that path."""
        if path in self.paths:
            return path, {}
        return self.oip.match(path)

    def _authorized(self, route: str, headers: dict[bytes, bytes]) -> bool:
        if self.api_key is None or route in PUBLIC_PATHS:
            return True
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def _read_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        """The whole body, Content-Length or chunked; 413 as soon as it is known to be over the limit
        (uvicorn then discards the rest of it, so the client reads the 413 rather than a reset)."""
        limit = self.options.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise HttpError(400, "bad Content-Length") from None
            if declared > limit:
                raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"request body of more than {limit} bytes exceeds the limit of {limit}")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- request plumbing -------------------------------------------------------------------------

    def body(self, request: Request, schema: str) -> Any:
        return decode(self.decoders[schema], request.body)

    def admit(self) -> None:
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

    async def infer(
        self,
        texts: list,
        options: list[dict[str, Any]],
        truncate: bool | None,
        *,
        keep_last: int | None = None,
    ) -> list:
        self.admit()
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
        body = self.body(request, "PredictRequest")
        single = isinstance(body.inputs, str)
        results = await self.classify(
            [body.inputs] if single else body.inputs,
            body.parameters,
            truncate=body.truncate,
            raw_scores=getattr(body, "raw_scores", False),
        )
        return Response.json(results[0] if single else results)

    async def predict_images(self, request: Request) -> Response:
        """Image bundles: the raw image (image/*) or JSON with base64 images (serve.images)."""
        from .images import ImageError, ImageLimits, parse_image_request

        parse = functools.partial(
            parse_image_request,
            request.headers.get(b"content-type", b"").decode("latin-1"),
            request.body,
            ImageLimits(max_bytes=self.options.max_body_bytes),
            max_images=self.options.max_client_batch_size,
        )
        try:  # decoding images takes milliseconds each: off the event loop
            req = await asyncio.get_running_loop().run_in_executor(None, parse)
        except ImageError as e:
            raise HttpError(e.status, str(e)) from None
        self.admit()
        self.in_flight += 1
        try:
            results = await self.batcher.submit(req.images, req.options, [1] * len(req.images))
        except Exception as e:
            raise HttpError(
                424, f"model call failed: {type(e).__name__}: {str(e)[:200]}", "backend"
            ) from None
        finally:
            self.in_flight -= 1
        return Response.json(results[0] if req.single else results)

    async def answer(self, request: Request) -> Response:
        """Question-answering bundles: {"inputs": {"question", "context"} or a list} -> the pipeline's
        {"answer", "score", "start", "end"} (serve.qa)."""
        import json

        from .qa import QARequestError, WindowingError, parse_request, response

        try:
            payload = json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HttpError(400, f"request body is not valid JSON ({str(e)[:80]})") from None
        try:
            questions, contexts, opts, single = parse_request(payload)
            if len(questions) > self.options.max_client_batch_size:
                raise HttpError(
                    413,
                    f"inputs: more than the limit of {self.options.max_client_batch_size} inputs "
                    "in one request (--max-client-batch-size)",
                )
            items = self.runner.questions(questions, contexts)
        except (QARequestError, WindowingError) as e:
            raise HttpError(422, str(e)) from None
        self.admit()
        self.in_flight += 1
        try:
            answers = await self.batcher.submit(items, [opts] * len(items), [len(q.ids) for q in items])
        except Exception as e:
            raise HttpError(
                424, f"model call failed: {type(e).__name__}: {str(e)[:200]}", "backend"
            ) from None
        finally:
            self.in_flight -= 1
        return Response.json(response(answers, single))

    async def generate_seq2seq(self, request: Request) -> Response:
        """Seq2seq bundles: {"inputs": text or [texts], "parameters": {...}} -> {"generated_text"} each."""
        texts, results, single = await self._seq2seq(request)
        out = [{"generated_text": r["generated_text"]} for r in results]
        return Response.json(out[0] if single else out)

    async def inference_api_seq2seq(self, request: Request) -> Response:
        """The Inference API's shape: [{"translation_text"}] / [{"summary_text"}] (the manifest's key)."""
        _, results, _ = await self._seq2seq(request)
        key = self.runner.bundle.manifest.get("inference_api_key") or "generated_text"
        return Response.json([{key: r["generated_text"]} for r in results])

    async def _seq2seq(self, request: Request) -> tuple[list[str], list, bool]:
        import json

        try:
            payload = json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HttpError(400, f"request body is not valid JSON ({str(e)[:80]})") from None
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise HttpError(422, "inputs: expected a non-empty string or a list of them")
        if not texts:
            raise HttpError(400, "inputs: the batch is empty", "empty")
        if len(texts) > self.options.max_client_batch_size:
            raise HttpError(
                413,
                f"inputs: more than the limit of {self.options.max_client_batch_size} inputs "
                "in one request (--max-client-batch-size)",
            )
        params = self._seq2seq_params(payload.get("parameters"))
        self.admit()
        self.in_flight += 1
        try:
            items = self.runner.encode(texts)
            results = await self.batcher.submit(
                items, [{"params": params}] * len(items), [len(i.ids) for i in items]
            )
        except Exception as e:
            raise HttpError(
                424, f"model call failed: {type(e).__name__}: {str(e)[:200]}", "backend"
            ) from None
        finally:
            self.in_flight -= 1
        return texts, results, single

    def _seq2seq_params(self, given: Any):
        from .generate import DEFAULT_NEW_TOKENS
        from .seq2seq import Seq2SeqParams

        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise HttpError(422, "parameters: expected an object")
        values: dict[str, Any] = {}
        for name, value in given.items():
            check = SEQ2SEQ_PARAMETERS.get(name)
            if check is None:
                raise HttpError(
                    422, f"parameters.{name}: not supported (known: {', '.join(SEQ2SEQ_PARAMETERS)})"
                )
            if value is None:
                continue
            if not check[0](value):
                raise HttpError(422, f"parameters.{name}: must be {check[1]}, got {value!r}")
            values[name] = value
        cap = self.options.max_new_tokens
        if values.get("max_new_tokens", 0) > cap:
            raise HttpError(422, f"parameters.max_new_tokens: must be <= {cap} (--max-new-tokens)")
        values.setdefault("max_new_tokens", min(DEFAULT_NEW_TOKENS, cap))
        values.setdefault("num_beams", int(self.runner.generator.config.get("num_beams") or 1))
        params = Seq2SeqParams(**values)
        if params.num_beams > 1 and params.sampling:
            raise HttpError(
                422, "parameters: beam search with sampling is not supported (num_beams 1 samples)"
            )
        return params

    async def classify(
        self, inputs: list, params, *, truncate: bool | None = None, raw_scores: bool = False
    ) -> list:
        if self.task == "text-classification":
            texts = [tuple(t) if isinstance(t, list) else t for t in inputs]
            function = "none" if raw_scores else (params.function_to_apply if params else None)
            options = [{"function": function, "top_k": params.top_k if params else None}] * len(texts)
        else:
            texts = inputs
            strategy = (params.aggregation_strategy if params else None) or "simple"
            ignore = params.ignore_labels if params else None
            options = [
                {
                    "text": t,
                    "aggregation_strategy": strategy,
                    "ignore_labels": ["O"] if ignore is None else ignore,
                }
                for t in texts
            ]
        return await self.infer(texts, options, truncate)

    async def generate(self, request: Request) -> Response:
        return Response.json(await self._generate(self.body(request, "GenerateRequest")))

    async def _generate(self, body) -> dict[str, Any]:
        from .generate import DEFAULT_NEW_TOKENS, GenerationParams

        p = body.parameters
        if p is not None:
            unsupported = [
                name
                for name in p.__struct_fields__
                if name in UNSUPPORTED_GENERATION and getattr(p, name) is not None
            ]
            if unsupported:
                raise HttpError(422, f"parameters.{unsupported[0]}: not supported by this server")
        if body.stream is True:
            raise HttpError(422, 'stream: streaming responses are not supported; send "stream": false')
        p = p or _NO_PARAMETERS
        params = GenerationParams(
            max_new_tokens=p.max_new_tokens or min(DEFAULT_NEW_TOKENS, self.options.max_new_tokens),
            do_sample=bool(p.do_sample),
            temperature=_or(p.temperature, 1.0),
            top_p=_or(p.top_p, 1.0),
            top_k=_or(p.top_k, 0),
            seed=p.seed,
            stop=p.stop or [],
        )
        # TGI's `truncate` keeps the last N prompt tokens; prompts over max_length follow --auto-truncate
        keep_last = p.truncate
        result = (
            await self.infer(
                [body.inputs], [{"params": params}], True if keep_last else None, keep_last=keep_last
            )
        )[0]
        text = result["generated_text"]
        out: dict[str, Any] = {"generated_text": body.inputs + text if p.return_full_text else text}
        if p.details:
            out["details"] = result["details"]
        return out

    async def inference_api(self, request: Request) -> Response:
        body = self.body(request, "InferenceRequest")
        if self.task == GENERATION:
            return Response.json([await self._generate(body)])
        single = isinstance(body.inputs, str)
        results = await self.classify([body.inputs] if single else body.inputs, body.parameters)
        if self.task == "token-classification" and single:
            return Response.json(results[0])
        return Response.json(results)  # text classification: always one list per input, as the HF API does

    async def tokenize(self, request: Request) -> Response:
        body = self.body(request, "TokenizeRequest")
        if not self.ready:
            raise HttpError(503, "not ready (starting or shutting down)", "unhealthy")
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        encodings = await self._encode(texts, True, untruncated=True, special_tokens=body.add_special_tokens)
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

    @property
    def healthy(self) -> bool:
        return self.ready and self.batcher.alive

    async def health(self, request: Request) -> Response:
        if self.healthy:
            return Response.json({"status": "ok"})
        return Response.error(503, "unhealthy", "unhealthy")

    async def info(self, request: Request) -> Response:
        from importlib.metadata import version

        bundle, o = self.runner.bundle, self.options
        info = {
            "model_id": str(bundle.path),
            "model_name": self.model_name,
            "model_sha": bundle.manifest["sha256"].get("model.onnx"),
            "task": self.task,
            "max_input_length": bundle.manifest.get("max_length"),
            "max_concurrent_requests": o.max_concurrent_requests,
            "max_batch_tokens": self.batcher.max_batch_tokens,
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
        return Response(200, self.metrics.render().encode(), b"text/plain; version=0.0.4; charset=utf-8")

    async def openapi_json(self, request: Request) -> Response:
        return Response(200, self.openapi_body)


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


class _NoParameters:
    def __getattr__(self, name: str) -> None:
        return None


_NO_PARAMETERS = _NoParameters()


def _or(value, default):
    return default if value is None else value


def _int(low: int):
    return lambda v: type(v) is int and v >= low


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# Seq2seq generation parameters: name -> (check, what the check wants)
SEQ2SEQ_PARAMETERS = {
    "max_new_tokens": (_int(1), "an integer >= 1"),
    "num_beams": (_int(1), "an integer >= 1"),
    "do_sample": (lambda v: isinstance(v, bool), "true or false"),
    "temperature": (lambda v: _number(v) and 0 < v <= 100, "a number in (0, 100]"),
    "top_k": (_int(0), "an integer >= 0"),
    "top_p": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "seed": (_int(0), "an integer >= 0"),
    "length_penalty": (_number, "a number"),
    "early_stopping": (lambda v: isinstance(v, bool) or v == "never", 'true, false or "never"'),
}
