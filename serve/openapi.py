"""The OpenAPI 3.0 document of the daemon, built for the bundle's task and the server's limits.

Request bodies are validated against these same schemas (serve.validate), so what the document
promises is what the server enforces.
"""

from __future__ import annotations

from typing import Any

ERROR_CODES = {
    "400": "Malformed JSON, or an empty batch",
    "401": "Missing or wrong bearer token (when the server has an API key)",
    "413": "Body, batch or input too large",
    "422": "Body does not match the schema, or the tokenizer rejected an input",
    "424": "The model call failed",
    "429": "Too many requests in flight: retry later",
    "503": "Not ready, or shutting down",
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def components(task: str, *, max_inputs: int, max_new_tokens: int) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1}
    pair = {"type": "array", "items": text, "minItems": 2, "maxItems": 2}
    pair_error = "{where}: must be a string or a [text, text_pair] list"
    scored = {
        "type": "object",
        "required": ["label", "score"],
        "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    }
    schemas: dict[str, Any] = {
        "ErrorResponse": {
            "type": "object",
            "required": ["error", "error_type"],
            "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
        },
        "Texts": {
            "anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": max_inputs}],
            "x-error": "{where}: must be a non-empty string or a list of them",
        },
        "TokenizeRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {"inputs": _ref("Texts"), "add_special_tokens": {"type": "boolean"}},
        },
        "SimpleToken": {
            "type": "object",
            "required": ["id", "text", "special"],
            "properties": {
                "id": {"type": "integer"},
                "text": {"type": "string"},
                "special": {"type": "boolean"},
                "start": _nullable({"type": "integer"}),
                "stop": _nullable({"type": "integer"}),
            },
        },
        "TokenizeResponse": {"type": "array", "items": {"type": "array", "items": _ref("SimpleToken")}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Info": {
            "type": "object",
            "required": ["model_id", "task", "max_input_length"],
            "properties": {
                "model_id": {"type": "string"},
                "task": {"type": "string"},
                "max_input_length": {"type": "integer"},
            },
        },
    }
    if task == "text-classification":
        schemas["Prediction"] = scored
        schemas["ClassificationParameters"] = _nullable(
            {
                "type": "object",
                "properties": {
                    "top_k": _nullable({"type": "integer", "minimum": 1}),
                    "function_to_apply": _nullable(
                        {"type": "string", "enum": ["softmax", "sigmoid", "none"]}
                    ),
                },
            }
        )
        schemas["PredictRequest"] = {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": {
                    "anyOf": [
                        text,
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": max_inputs,
                            "items": {"anyOf": [text, pair], "x-error": pair_error},
                        },
                    ],
                    "x-error": "{where}: must be a non-empty string or a non-empty list of texts",
                },
                "truncate": _nullable({"type": "boolean"}),
                "raw_scores": {"type": "boolean"},
                "truncation_direction": {"type": "string", "enum": ["Right", "right"]},
                "parameters": _ref("ClassificationParameters"),
            },
        }
        schemas["PredictResponse"] = {
            "anyOf": [
                {"type": "array", "items": _ref("Prediction")},
                {"type": "array", "items": {"type": "array", "items": _ref("Prediction")}},
            ]
        }
        schemas["InferenceResponse"] = {
            "type": "array",
            "items": {"type": "array", "items": _ref("Prediction")},
        }
        schemas["InferenceRequest"] = {
            "type": "object",
            "required": ["inputs"],
            "properties": {"inputs": _ref("Texts"), "parameters": _ref("ClassificationParameters")},
        }
    elif task == "token-classification":
        schemas["Entity"] = {
            "type": "object",
            "required": ["score", "word", "start", "end"],
            "properties": {
                "entity_group": {"type": "string"},
                "entity": {"type": "string"},
                "index": {"type": "integer"},
                "score": {"type": "number"},
                "word": {"type": "string"},
                "start": {"type": "integer"},
                "end": {"type": "integer"},
            },
        }
        schemas["TokenParameters"] = _nullable(
            {
                "type": "object",
                "properties": {
                    "aggregation_strategy": _nullable(
                        {"type": "string", "enum": ["none", "simple", "first", "average", "max"]}
                    ),
                    "ignore_labels": _nullable({"type": "array", "items": {"type": "string"}}),
                },
            }
        )
        schemas["PredictRequest"] = {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": _ref("Texts"),
                "truncate": _nullable({"type": "boolean"}),
                "parameters": _ref("TokenParameters"),
            },
        }
        entities = {"type": "array", "items": _ref("Entity")}
        schemas["PredictResponse"] = {"anyOf": [entities, {"type": "array", "items": entities}]}
        schemas["InferenceResponse"] = schemas["PredictResponse"]
        schemas["InferenceRequest"] = {
            "type": "object",
            "required": ["inputs"],
            "properties": {"inputs": _ref("Texts"), "parameters": _ref("TokenParameters")},
        }
    else:
        schemas["GenerateParameters"] = _nullable(
            {
                "type": "object",
                "properties": {
                    "max_new_tokens": _nullable({"type": "integer", "minimum": 1, "maximum": max_new_tokens}),
                    "do_sample": _nullable({"type": "boolean"}),
                    "temperature": _nullable(
                        {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 100}
                    ),
                    "top_p": _nullable(
                        {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1}
                    ),
                    "top_k": _nullable({"type": "integer", "minimum": 0}),
                    "seed": _nullable({"type": "integer", "minimum": 0, "maximum": 2**63 - 1}),
                    "stop": _nullable({"type": "array", "items": text, "maxItems": 8}),
                    "details": _nullable({"type": "boolean"}),
                    "return_full_text": _nullable({"type": "boolean"}),
                    "truncate": _nullable({"type": "integer", "minimum": 1}),
                },
            }
        )
        schemas["GenerateRequest"] = {
            "type": "object",
            "required": ["inputs"],
            "properties": {"inputs": text, "parameters": _ref("GenerateParameters")},
        }
        schemas["GenerateResponse"] = {
            "type": "object",
            "required": ["generated_text"],
            "properties": {"generated_text": {"type": "string"}, "details": {"type": "object"}},
        }
        schemas["InferenceRequest"] = schemas["GenerateRequest"]
        schemas["InferenceResponse"] = {"type": "array", "items": _ref("GenerateResponse")}
    return schemas


def _operation(
    summary: str,
    request: str | None,
    response: str | dict[str, Any],
    errors: tuple[str, ...] = tuple(ERROR_CODES),
) -> dict[str, Any]:
    content = response if isinstance(response, dict) else {"application/json": {"schema": _ref(response)}}
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": content}}}
    for code in errors:
        op["responses"][code] = {
            "description": ERROR_CODES[code],
            "content": {"application/json": {"schema": _ref("ErrorResponse")}},
        }
    if request:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
    return op


def document(task: str, *, model_id: str, max_inputs: int, max_new_tokens: int, auth: bool) -> dict[str, Any]:
    read_errors = ("401",) if auth else ()
    paths: dict[str, Any] = {
        "/health": {"get": _operation("200 when ready, 503 when not", None, "Health", ("503",))},
        "/info": {"get": _operation("Bundle and server facts", None, "Info", read_errors)},
        "/metrics": {
            "get": _operation(
                "Prometheus metrics", None, {"text/plain": {"schema": {"type": "string"}}}, read_errors
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document", None, {"application/json": {"schema": {"type": "object"}}}, read_errors
            )
        },
        "/tokenize": {
            "post": _operation(
                "Tokens of each input, with character offsets",
                "TokenizeRequest",
                "TokenizeResponse",
                ("400", *read_errors, "413", "422", "503"),
            )
        },
        "/": {
            "post": _operation(
                "Hugging Face Inference API route (InferenceClient(base_url=...))",
                "InferenceRequest",
                "InferenceResponse",
            )
        },
    }
    if task == "text-generation-with-past":
        paths["/generate"] = {
            "post": _operation(
                "Generate text (text-generation-inference's /generate)", "GenerateRequest", "GenerateResponse"
            )
        }
    else:
        paths["/predict"] = {
            "post": _operation(
                f"{task}: one result for a string, a list for a list", "PredictRequest", "PredictResponse"
            )
        }
    if not auth:
        for item in paths.values():
            for op in item.values():
                op["responses"].pop("401", None)
    return {
        "openapi": "3.0.3",
        "info": {"title": "sft-serve", "version": "1", "description": f"Serving {model_id}"},
        "paths": paths,
        "components": {"schemas": components(task, max_inputs=max_inputs, max_new_tokens=max_new_tokens)},
    }
