"""Request and response bodies as msgspec types: they decode and validate requests, and the OpenAPI
document the server publishes is generated from the same types, so the two never disagree.

The shapes are those of text-embeddings-inference (/predict, /tokenize), text-generation-inference
(/generate), the Hugging Face Inference API (POST /) and the Open Inference Protocol v2 (/v2/...).
Limits that are server options (inputs per request, max_new_tokens) are part of the types, which are
built per server by `api_types`.
"""

# No `from __future__ import annotations`: the request types are classes built inside `api_types`, and
# msgspec must see their annotations as objects (the limits are that function's locals).
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

GENERATION = "text-generation-with-past"
SEQ2SEQ = "text2text-generation-with-past"
NonEmpty = Annotated[str, Meta(min_length=1)]
# Decoded as anything, documented as what the server accepts, so the app can refuse the rest by name.
Unsupported = Annotated[Any, Meta(extra_json_schema={"type": "null"})]
NoStreaming = Annotated[bool | None, Meta(extra_json_schema={"enum": [False, None]})]
# A [text, text_pair] list. (Not a tuple of constrained strings: msgspec 0.23 crashes on those in unions.)
Pair = Annotated[list[NonEmpty], Meta(min_length=2, max_length=2)]


class ErrorResponse(Struct):
    error: str
    error_type: str


class SimpleToken(Struct):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class Health(Struct):
    status: str


class Info(Struct, kw_only=True):
    model_id: str
    task: str
    max_input_length: int


class Prediction(Struct):
    label: str
    score: float


class Entity(Struct, omit_defaults=True):
    score: float
    word: str
    start: int
    end: int
    entity_group: str | None = None
    entity: str | None = None
    index: int | None = None


class GenerateResponse(Struct, omit_defaults=True):
    generated_text: str
    details: dict[str, Any] | None = None


# -- Open Inference Protocol v2 (KServe, Triton) -------------------------------------------------------


class MetadataTensor(Struct):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(Struct):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(Struct):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class InferInputTensor(Struct):
    name: str
    shape: list[Annotated[int, Meta(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferRequestedOutput(Struct):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(Struct):
    inputs: Annotated[list[InferInputTensor], Meta(min_length=1)]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(Struct, omit_defaults=True):
    model_name: str
    outputs: list[InferOutputTensor]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None


class OipError(Struct):
    error: str


def api_types(task: str, *, max_inputs: int, max_new_tokens: int) -> dict[str, Any]:
    """The request and response types of a server for `task` (names as in the OpenAPI document)."""
    texts = NonEmpty | Annotated[list[NonEmpty], Meta(min_length=1, max_length=max_inputs)]

    class TokenizeRequest(Struct):
        inputs: texts
        add_special_tokens: bool = True

    types: dict[str, Any] = {
        "TokenizeRequest": TokenizeRequest,
        "TokenizeResponse": list[list[SimpleToken]],
        "InferRequest": InferRequest,
        "InferResponse": InferResponse,
    }
    if task == "text-classification":

        class ClassificationParameters(Struct):
            top_k: Annotated[int, Meta(ge=1)] | None = None
            function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None

        class PredictRequest(Struct):
            inputs: NonEmpty | Annotated[list[NonEmpty | Pair], Meta(min_length=1, max_length=max_inputs)]
            truncate: bool | None = None
            raw_scores: bool = False
            truncation_direction: Literal["Right", "right"] = "Right"
            parameters: ClassificationParameters | None = None

        class InferenceRequest(Struct):
            inputs: texts
            parameters: ClassificationParameters | None = None

        types.update(
            PredictRequest=PredictRequest,
            PredictResponse=list[Prediction | list[Prediction]],
            InferenceRequest=InferenceRequest,
            InferenceResponse=list[list[Prediction]],
        )
    elif task == "token-classification":

        class TokenParameters(Struct):
            aggregation_strategy: Literal["none", "simple", "first", "average", "max"] | None = None
            ignore_labels: list[str] | None = None

        class PredictRequest(Struct):  # noqa: F811 (one class per task)
            inputs: texts
            truncate: bool | None = None
            parameters: TokenParameters | None = None

        class InferenceRequest(Struct):  # noqa: F811
            inputs: texts
            parameters: TokenParameters | None = None

        types.update(
            PredictRequest=PredictRequest,
            PredictResponse=list[Entity | list[Entity]],
            InferenceRequest=InferenceRequest,
            InferenceResponse=list[Entity | list[Entity]],
        )
    elif task == "question-answering":
        types.update(_qa_types(texts, max_inputs))
    elif task == "image-classification":
        types.update(_image_types(max_inputs))
    elif task == SEQ2SEQ:
        types.update(_seq2seq_types(texts, max_new_tokens))
    else:
        cap = max_new_tokens  # the field below has the same name, which would hide the argument in the class

        class GenerateParameters(Struct):
            max_new_tokens: Annotated[int, Meta(ge=1, le=cap)] | None = None
            do_sample: bool | None = None
            temperature: Annotated[float, Meta(gt=0, le=100)] | None = None
            top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
            top_k: Annotated[int, Meta(ge=0)] | None = None
            seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None
            stop: Annotated[list[NonEmpty], Meta(max_length=8)] | None = None
            details: bool | None = None
            return_full_text: bool | None = None
            truncate: Annotated[int, Meta(ge=1)] | None = None
            # text-generation-inference parameters this server does not implement: the document allows
            # only null, and the app refuses any other value with a 422 naming the parameter
            best_of: Unsupported = None
            decoder_input_details: Unsupported = None
            frequency_penalty: Unsupported = None
            grammar: Unsupported = None
            repetition_penalty: Unsupported = None
            top_n_tokens: Unsupported = None
            typical_p: Unsupported = None
            watermark: Unsupported = None
            adapter_id: Unsupported = None

        class GenerateRequest(Struct):
            inputs: NonEmpty
            parameters: GenerateParameters | None = None
            stream: NoStreaming = None

        types.update(
            GenerateRequest=GenerateRequest,
            GenerateResponse=GenerateResponse,
            InferenceRequest=GenerateRequest,
            InferenceResponse=list[GenerateResponse],
        )
    return types


def _qa_types(texts: Any, max_inputs: int) -> dict[str, Any]:
    """Documentation of the question-answering routes (serve.qa.parse_request checks the bodies)."""

    class QuestionContext(Struct):
        question: NonEmpty
        context: NonEmpty

    class QAParameters(Struct):
        top_k: Annotated[int, Meta(ge=1)] | None = None
        max_answer_len: Annotated[int, Meta(ge=1)] | None = None
        handle_impossible_answer: bool | None = None
        align_to_words: bool | None = None

    class PredictRequest(Struct):
        inputs: QuestionContext | Annotated[list[QuestionContext], Meta(min_length=1, max_length=max_inputs)]
        parameters: QAParameters | None = None

    class Answer(Struct):
        answer: str
        score: float
        start: int
        end: int

    answers = Answer | list[Answer | list[Answer]]
    return {
        "PredictRequest": PredictRequest,
        "PredictResponse": answers,
        "InferenceRequest": PredictRequest,
        "InferenceResponse": answers,
    }


def _image_types(max_inputs: int) -> dict[str, Any]:
    """Documentation of the image routes' JSON form (a raw image/* body is accepted too; serve.images
    checks the bodies)."""

    class ImageParameters(Struct):
        top_k: Annotated[int, Meta(ge=1)] | None = None
        function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None

    class PredictRequest(Struct):
        inputs: (
            Annotated[str, Meta(description="base64 image")]
            | Annotated[list[str], Meta(min_length=1, max_length=max_inputs)]
        )
        parameters: ImageParameters | None = None

    return {
        "PredictRequest": PredictRequest,
        "PredictResponse": list[Prediction | list[Prediction]],
        "InferenceRequest": PredictRequest,
        "InferenceResponse": list[Prediction | list[Prediction]],
    }


def _seq2seq_types(texts: Any, max_new_tokens: int) -> dict[str, Any]:
    """Documentation of the text2text routes (serve.app checks the parameters)."""

    class Seq2SeqParameters(Struct):
        max_new_tokens: Annotated[int, Meta(ge=1, le=max_new_tokens)] | None = None
        num_beams: Annotated[int, Meta(ge=1)] | None = None
        do_sample: bool | None = None
        temperature: Annotated[float, Meta(gt=0, le=100)] | None = None
        top_k: Annotated[int, Meta(ge=0)] | None = None
        top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
        seed: Annotated[int, Meta(ge=0)] | None = None
        length_penalty: float | None = None
        early_stopping: bool | Literal["never"] | None = None

    class GenerateRequest(Struct):
        inputs: texts
        parameters: Seq2SeqParameters | None = None

    return {
        "GenerateRequest": GenerateRequest,
        "GenerateResponse": GenerateResponse | list[GenerateResponse],
        "InferenceRequest": GenerateRequest,
        "InferenceResponse": list[dict[str, str]],
    }


# -- validation errors in the server's words -----------------------------------------------------------

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_KINDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}


class RequestError(ValueError):
    """A body that does not decode into its type: status, message naming the field, error type."""

    def __init__(self, status: int, message: str, error_type: str = "validation"):
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def decode(decoder: msgspec.json.Decoder, body: bytes) -> Any:
    """The typed body; RequestError 400 for malformed JSON or an empty batch, 413 for a batch over the
    limit, 422 for anything else the type refuses."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        if not re.match(r"Expected `int[^`]*`, got `float`", str(e)):
            raise _request_error(str(e)) from None
    except msgspec.DecodeError as e:
        raise RequestError(400, f"request body is not valid JSON ({str(e)[:80]})") from None
    # JSON Schema counts 3.0 as an integer, msgspec does not: make integral numbers ints and check again
    try:
        return msgspec.convert(_integral(msgspec.json.decode(body)), decoder.type, strict=True)
    except msgspec.ValidationError as e:
        raise _request_error(str(e)) from None


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def _request_error(text: str) -> RequestError:
    match = _AT.match(text)
    message, path = match["message"], (match["path"] or "").lstrip(".")
    where = path or "body"
    if missing := re.match(r"Object missing required field `(.+)`", message):
        return RequestError(422, f"{_join(path, missing[1])}: required")
    if re.match(r"Expected `array` of length >= 1", message):
        return RequestError(400, f"{where}: the batch is empty", "empty")
    if limit := re.match(r"Expected `array` of length <= (\d+)", message):
        if path == "inputs":
            return RequestError(
                413,
                f"inputs: more than the limit of {limit[1]} inputs in one request (--max-client-batch-size)",
            )
        return RequestError(422, f"{where}: must have at most {limit[1]} items")
    if re.match(r"Expected `str` of length >= 1", message):
        return RequestError(422, f"{where}: must not be empty")
    if bound := re.match(r"Expected `(?:int|float)` (>=|>|<=|<) (\S+)", message):
        return RequestError(422, f"{where}: must be {bound[1]} {bound[2]}")
    if kinds := re.match(r"Expected `([^`]+)`, got `([^`]+)`", message):
        wanted = " or ".join(_KINDS.get(k.strip(), k.strip()) for k in kinds[1].split("|"))
        return RequestError(422, f"{where}: must be {wanted}, not {_KINDS.get(kinds[2], kinds[2])}")
    if enum := re.match(r"Invalid enum value (.+)", message):
        return RequestError(422, f"{where}: {enum[1]} is not one of the allowed values")
    return RequestError(422, f"{where}: {message[:1].lower()}{message[1:]}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
