"""Checking request bodies against the OpenAPI schema the server publishes, so the two never disagree.

Understands the subset of OpenAPI 3.0 schema objects that serve/openapi.py uses: $ref, type, nullable,
enum, anyOf, properties / required / additionalProperties, items, min/maxItems, min/maxLength,
minimum / maximum / exclusiveMinimum / exclusiveMaximum (3.0 booleans).
"""

from __future__ import annotations

import math
from typing import Any

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and math.isfinite(v) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
}
ARTICLES = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
}


class SchemaError(ValueError):
    """The body does not match the schema; the message names the field (e.g. parameters.top_k)."""


def validate(value: Any, schema: dict[str, Any], components: dict[str, Any], where: str = "body") -> Any:
    """Return `value` with integral floats made ints where the schema wants integers; raise SchemaError."""
    schema = _resolve(schema, components)
    if value is None:
        if schema.get("nullable"):
            return None
        raise SchemaError(f"{where}: must not be null")
    if "anyOf" in schema:
        specific = None
        for option in schema["anyOf"]:
            try:
                return validate(value, option, components, where)
            except SchemaError as e:
                kind = _resolve(option, components).get("type")
                if kind and TYPES[kind](value):
                    specific = specific or e  # the option of the right type says best what is wrong
        message = schema.get("x-error", "{where}: has the wrong type")
        raise specific or SchemaError(message.replace("{where}", where))
    kind = schema.get("type")
    if kind and not TYPES[kind](value):
        raise SchemaError(f"{where}: must be {ARTICLES[kind]}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{where}: must be one of {', '.join(map(repr, schema['enum']))}")
    if kind == "integer":
        value = int(value)
    if kind in ("integer", "number"):
        _check_range(value, schema, where)
    if kind == "string":
        if len(value) < schema.get("minLength", 0):
            raise SchemaError(
                f"{where}: must not be empty"
                if schema["minLength"] == 1
                else f"{where}: must have at least {schema['minLength']} characters"
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaError(f"{where}: must have at most {schema['maxLength']} characters")
    if kind == "array":
        if len(value) < schema.get("minItems", 0):
            raise SchemaError(f"{where}: must have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(f"{where}: must have at most {schema['maxItems']} items")
        if "items" in schema:
            value = [validate(v, schema["items"], components, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "object":
        value = dict(value)
        for name in schema.get("required", ()):
            if name not in value:
                raise SchemaError(f"{_join(where, name)}: required")
        properties = schema.get("properties", {})
        for name, sub in properties.items():
            if name in value:
                value[name] = validate(value[name], sub, components, _join(where, name))
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(properties))
            if extra:
                raise SchemaError(f"{_join(where, extra[0])}: unknown field")
    return value


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    return components[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _check_range(value: float, schema: dict[str, Any], where: str) -> None:
    if "minimum" in schema:
        low = schema["minimum"]
        if value < low or (schema.get("exclusiveMinimum") and value == low):
            raise SchemaError(f"{where}: must be {'>' if schema.get('exclusiveMinimum') else '>='} {low}")
    if "maximum" in schema:
        high = schema["maximum"]
        if value > high or (schema.get("exclusiveMaximum") and value == high):
            raise SchemaError(f"{where}: must be {'<' if schema.get('exclusiveMaximum') else '<='} {high}")


def _join(where: str, name: str) -> str:
    return name if where == "body" else f"{where}.{name}"
