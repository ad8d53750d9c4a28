"""The Open Inference Protocol v2 (the REST protocol of KServe and Triton Inference Server) beside TEI's.

Inputs: a BYTES tensor "text" and, for classification, an optional "text_pair" of the same shape, as
JSON data or in the binary tensor extension (each element a little-endian uint32 length, then the bytes).
Outputs by task: "label" (BYTES), "score" (FP32, the label's) and "scores" (FP32, [n, labels] in the
bundle's label order) for classification; "entities" (BYTES, one JSON list per text) for token
classification; "generated_text" (BYTES) for generation. Each output is JSON data, or binary when the
request asks (`binary_data` on the output, or `binary_data_output` on the request).
"""

from __future__ import annotations

import math
import struct
from importlib.metadata import version
from typing import Any

import msgspec
import numpy as np

from .schemas import RequestError, decode
from .wire import Request, Response

HEADER_LENGTH = b"inference-header-content-length"
_encode = msgspec.json.Encoder().encode


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


class OipRoutes:
    def __init__(self, app):
        """`app` is the serve.app.App whose batcher, runner and options these routes use."""
        self.app = app
        self.task = app.task
        self.inputs = [_tensor("text", "BYTES", [-1])]
        if self.task == "text-classification":
            self.inputs.append(_tensor("text_pair", "BYTES", [-1]))
            labels = len(app.runner.bundle.labels)
            self.outputs = [
                _tensor("label", "BYTES", [-1]),
                _tensor("score", "FP32", [-1]),
                _tensor("scores", "FP32", [-1, labels]),
            ]
        elif self.task == "token-classification":
            self.outputs = [_tensor("entities", "BYTES", [-1])]
        else:
            self.outputs = [_tensor("generated_text", "BYTES", [-1])]
        self.routes = {
            ("GET", "/v2"): self.server_metadata,
            ("GET", "/v2/health/live"): self.live,
            ("GET", "/v2/health/ready"): self.ready,
            ("GET", "/v2/models/{name}"): self.model_metadata,
            ("GET", "/v2/models/{name}/ready"): self.model_ready,
            ("POST", "/v2/models/{name}/infer"): self.infer,
        }

    def match(self, path: str) -> tuple[str | None, dict[str, str]]:
        """/v2/models/NAME[/versions/V][/ready|/infer] -> its route template and {"name": NAME}."""
        if not path.startswith("/v2/models/"):
            return None, {}
        parts = path[len("/v2/models/") :].split("/")
        name, rest = parts[0], parts[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            rest = rest[2:]
        if not name or len(rest) > 1 or (rest and rest[0] not in ("ready", "infer")):
            return None, {}
        return "/v2/models/{name}" + (f"/{rest[0]}" if rest else ""), {"name": name}

    def _model(self, request: Request) -> None:
        if request.params["name"] != self.app.model_name:
            raise RequestError(
                404,
                f"no model {request.params['name']!r} (this server has {self.app.model_name!r})",
                "not_found",
            )

    # -- metadata and health ------------------------------------------------------------------------

    async def server_metadata(self, request: Request):
        return Response.json(
            {"name": "sft-serve", "version": version("sft-toolchain"), "extensions": ["binary_tensor_data"]}
        )

    async def live(self, request: Request):
        return Response(200)

    async def ready(self, request: Request):
        return Response(200) if self.app.healthy else Response.error(503, "not ready", "unhealthy")

    async def model_metadata(self, request: Request):
        self._model(request)
        return Response.json(
            {
                "name": self.app.model_name,
                "versions": ["1"],
                "platform": "onnxruntime_onnx",
                "inputs": self.inputs,
                "outputs": self.outputs,
            }
        )

    async def model_ready(self, request: Request):
        self._model(request)
        return await self.ready(request)

    # -- inference ------------------------------------------------------------------------------------

    async def infer(self, request: Request):
        self._model(request)
        header, binary = _split(request)
        body = decode(self.app.decoders["InferRequest"], header)
        tensors = _read_inputs(body.inputs, binary, {t["name"] for t in self.inputs})
        texts = tensors["text"]
        if not texts:
            raise RequestError(400, "inputs: the 'text' tensor is empty", "empty")
        if len(texts) > self.app.options.max_client_batch_size:
            raise RequestError(
                413,
                f"inputs: {len(texts)} texts exceed the limit of {self.app.options.max_client_batch_size} "
                f"(--max-client-batch-size)",
            )
        pairs = tensors.get("text_pair")
        if pairs is not None:
            if len(pairs) != len(texts):
                raise RequestError(400, f"inputs: 'text_pair' has {len(pairs)} elements, 'text' {len(texts)}")
            texts = [list(p) for p in zip(texts, pairs, strict=True)]
        values = await self._run(texts, body.parameters or {})
        wanted = self._wanted(body)
        outputs, blobs = [], []
        for spec in self.outputs:
            if spec["name"] not in wanted:
                continue
            data = values[spec["name"]]
            shape = [len(texts)] + ([data.shape[1]] if spec["name"] == "scores" else [])
            tensor: dict[str, Any] = {"name": spec["name"], "datatype": spec["datatype"], "shape": shape}
            if wanted[spec["name"]]:
                blob = _bytes_tensor(data) if spec["datatype"] == "BYTES" else data.astype("<f4").tobytes()
                tensor["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                tensor["data"] = data if spec["datatype"] == "BYTES" else data.reshape(-1).tolist()
            outputs.append(tensor)
        response = {"model_name": self.app.model_name, "model_version": "1", "outputs": outputs}
        if body.id is not None:
            response["id"] = body.id
        if not blobs:
            return Response.json(response)
        head = _encode(response)
        return Response(
            200,
            head + b"".join(blobs),
            b"application/octet-stream",
            [(HEADER_LENGTH, str(len(head)).encode())],
        )

    def _wanted(self, body) -> dict[str, bool]:
        """Output name -> whether it goes binary."""
        default = bool((body.parameters or {}).get("binary_data_output", False))
        names = {t["name"] for t in self.outputs}
        if not body.outputs:
            return dict.fromkeys(names, default)
        wanted = {}
        for out in body.outputs:
            if out.name not in names:
                raise RequestError(
                    400, f"outputs: no output {out.name!r} (this model has {', '.join(sorted(names))})"
                )
            wanted[out.name] = bool((out.parameters or {}).get("binary_data", default))
        return wanted

    async def _run(self, texts: list, parameters: dict[str, Any]) -> dict[str, Any]:
        app = self.app
        if self.task == "text-classification":
            results = await app.classify(texts, None)
            index = {label: i for i, label in enumerate(app.runner.bundle.labels)}
            scores = np.zeros((len(results), len(index)), dtype=np.float32)
            for row, result in enumerate(results):
                for item in result:
                    scores[row, index[item["label"]]] = item["score"]
            return {
                "label": [r[0]["label"] for r in results],
                "score": np.array([r[0]["score"] for r in results], dtype=np.float32),
                "scores": scores,
            }
        if self.task == "token-classification":
            results = await app.classify(texts, None)
            return {"entities": [_encode(r).decode() for r in results]}
        from .generate import DEFAULT_NEW_TOKENS, GenerationParams

        wanted = parameters.get("max_new_tokens")
        limit = (
            wanted
            if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0
            else DEFAULT_NEW_TOKENS
        )
        params = GenerationParams(max_new_tokens=min(limit, app.options.max_new_tokens))
        results = await app.infer(texts, [{"params": params}] * len(texts), None)
        return {"generated_text": [r["generated_text"] for r in results]}


def _split(request: Request) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (binary tensor extension)."""
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        return request.body, b""
    try:
        n = int(length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(request.body):
        raise RequestError(
            400, f"Inference-Header-Content-Length: {length.decode('latin-1')!r} does not fit the body"
        )
    return request.body[:n], request.body[n:]


def _read_inputs(inputs, binary: bytes, known: set[str]) -> dict[str, list[str]]:
    tensors: dict[str, list[str]] = {}
    offset = 0
    for t in inputs:
        where = f"inputs[{t.name!r}]"
        if t.name not in known:
            raise RequestError(400, f"{where}: no such input (this model takes {', '.join(sorted(known))})")
        if t.name in tensors:
            raise RequestError(400, f"{where}: given twice")
        if t.datatype != "BYTES":
            raise RequestError(400, f"{where}: datatype must be BYTES, not {t.datatype}")
        count = math.prod(t.shape)
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary) - offset:
                raise RequestError(400, f"{where}: binary_data_size {size!r} does not fit the binary data")
            values = _parse_bytes(binary[offset : offset + size], where)
            offset += size
        elif t.data is not None:
            values = _flatten(t.data, where)
        else:
            raise RequestError(400, f"{where}: no data (give 'data' or binary data)")
        if len(values) != count:
            raise RequestError(
                400, f"{where}: shape {t.shape} holds {count} elements, the data {len(values)}"
            )
        tensors[t.name] = values
    if "text" not in tensors:
        raise RequestError(400, "inputs: the 'text' tensor is required")
    return tensors


def _flatten(data: list, where: str) -> list[str]:
    out: list[str] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise RequestError(400, f"{where}: BYTES data must be strings, not {type(item).__name__}")
            out.append(item)
        else:
            stack.pop()
    return out


def _parse_bytes(blob: bytes, where: str) -> list[str]:
    out, i = [], 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise RequestError(400, f"{where}: truncated binary BYTES element")
        (n,) = struct.unpack_from("<I", blob, i)
        if i + 4 + n > len(blob):
            raise RequestError(400, f"{where}: truncated binary BYTES element")
        try:
            out.append(blob[i + 4 : i + 4 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(400, f"{where}: element {len(out)} is not UTF-8") from None
        i += 4 + n
    return out


def _bytes_tensor(values: list[str]) -> bytes:
    parts = []
    for v in values:
        b = v.encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)
