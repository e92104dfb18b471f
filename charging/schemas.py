"""Checking an operator's document (catalog, coverage table, billing settings) against
its JSON schema, the one statement of the document's shape used at run time.

The schema says the shape: exact types, required fields, no field it does not list,
patterns, ranges. Each document's own module then checks what a schema cannot say
(references between parts, ordering, duplicates) and merges both lists, so an operator
sees every bad field at once, each by its path (``plans[2].versions[0].rates[5].increment``).

Nesting is bounded before anything recurses: ``json.loads`` and a schema walk both
recurse per level, and a document nested a few thousand levels deep would otherwise end
in a RecursionError (an INTERNAL error at the gRPC edge) instead of a named problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from typing import Any

import jsonschema

from charging.errors import InvalidRequest

MAX_DEPTH = 32
Problems = list[tuple[str, str]]


class DocumentInvalid(InvalidRequest):
    """Every problem of a rejected document, each naming its field."""

    def __init__(self, problems: Problems) -> None:
        super().__init__(problems[0][0], "; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems

    def __str__(self) -> str:
        return self.message


# A JSON string (with escapes) or one bracket: enough to measure nesting without parsing.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def parse_json(text: str | bytes, field: str = "json", error: type[DocumentInvalid] = DocumentInvalid) -> Any:
    """Parse a document, refusing one nested deeper than ``MAX_DEPTH`` before parsing it."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise error([(field, "not UTF-8")]) from None
    depth = 0
    for token in _TOKENS.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise error([(field, f"nested deeper than {MAX_DEPTH} levels")])
        elif bracket in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error([(field, f"not JSON: {exc}")]) from None


def too_deep(doc: Any) -> str | None:
    """The path of the first value nested deeper than ``MAX_DEPTH``, or None (no recursion)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(doc, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping | list):
            if len(path) >= MAX_DEPTH:
                return field_path(path) or "document"
            items: Iterable[tuple[Any, Any]] = value.items() if isinstance(value, Mapping) else enumerate(value)
            stack.extend((v, (*path, k)) for k, v in items)
    return None


def field_path(path: Iterable[str | int]) -> str:
    """``("plans", 2, "id")`` -> ``plans[2].id``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class Schema:
    """A JSON schema (draft 2020-12) shipped in a package, naming every bad field."""

    def __init__(self, package: str, name: str, root: str, error: type[DocumentInvalid] = DocumentInvalid) -> None:
        self.doc = json.loads(resources.files(package).joinpath(name).read_text())
        jsonschema.Draft202012Validator.check_schema(self.doc)
        self._validator = jsonschema.Draft202012Validator(self.doc)
        # The field named when the whole document is wrong (not an object, say).
        self.root = root
        self.error = error

    def validate(self, doc: Any) -> tuple[Problems, Any]:
        """Every field that breaks the schema, in document order, and a copy of ``doc``
        without the values it refused (an object loses the key, a list keeps the place as
        null so later indexes keep their names): the document's own checker then runs on
        shapes it can rely on. Nesting beyond ``MAX_DEPTH`` is refused at once."""
        deep = too_deep(doc)
        if deep is not None:
            raise self.error([(deep, f"nested deeper than {MAX_DEPTH} levels")])
        found: dict[tuple[str | int, ...], str] = {}
        for error in self._validator.iter_errors(doc):
            for path, message in _explain(error):
                found.setdefault(path, message)
        ordered = sorted(found.items(), key=lambda p: [(0, k) if isinstance(k, int) else (1, k) for k in p[0]])
        problems = [(field_path(path) or self.root, message) for path, message in ordered]
        return problems, _prune(doc, list(found)) if found else doc

    def check(self, doc: Any) -> None:
        """Raise ``error`` naming every field that breaks the schema."""
        problems, _ = self.validate(doc)
        if problems:
            raise self.error(problems)


def _explain(error: jsonschema.ValidationError) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """One error as (path, message) pairs, unknown and missing fields each on its own path."""
    path = tuple(error.absolute_path)
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "additionalProperties" and isinstance(value, Mapping):
        known = set(error.schema.get("properties", {}))
        for key in value:
            if key not in known:
                yield (*path, str(key)), "unknown field"
    elif kind == "required" and isinstance(value, Mapping):
        for key in expected:
            if key not in value:
                yield (*path, str(key)), "is required"
    elif kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        yield path, "must be " + " or ".join(_TYPE_NAMES.get(str(n), str(n)) for n in names)
    elif kind == "enum":
        yield path, "must be one of " + ", ".join(str(v) for v in expected)
    elif kind == "pattern":
        yield path, f"must match {expected}"
    elif kind in _BOUNDS:
        yield path, _BOUNDS[kind].format(expected)
    else:
        yield path, error.message


_TYPE_NAMES = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}
_BOUNDS = {
    "minimum": "must be at least {}",
    "maximum": "must be at most {}",
    "minItems": "must have at least {} items",
    "maxItems": "must have at most {} items",
    "minLength": "must have at least {} characters",
    "maxLength": "must have at most {} characters",
    "minProperties": "must have at least {} fields",
    "maxProperties": "must have at most {} fields",
}


def merge(schema_problems: Problems, own: Problems) -> Problems:
    """The schema's problems, then the document checker's on fields the schema did not
    already name (a wrong type would otherwise be reported twice)."""
    named = [f for f, _ in schema_problems]

    def covered(field: str) -> bool:
        return any(field == f or field.startswith((f + ".", f + "[")) for f in named)

    return schema_problems + [(f, m) for f, m in own if not covered(f)]


def _prune(doc: Any, paths: list[tuple[str | int, ...]]) -> Any:
    if not isinstance(doc, Mapping | list):
        return doc
    copy = json.loads(json.dumps(doc))
    for path in paths:
        if not path:
            continue
        node: Any = copy
        for part in path[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        last = path[-1]
        if isinstance(node, dict) and isinstance(last, str):
            node.pop(last, None)
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = None
    return copy
