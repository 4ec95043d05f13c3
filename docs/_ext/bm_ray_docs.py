"""Sphinx directives that generate bm-ray's reference tables from the code, the chart and the OpenAPI document.

Each directive reads its source at build time, so the page cannot drift from what it describes:

``bm-ray-reject-reasons``
    The reject vocabulary (``REJECT_REASONS``), one row per reason with what it means. A reason the code
    has and this file does not describe (or the other way round) is a build error.
``bm-ray-layout``
    Every constant of :mod:`bm_ray.layout` (the files, directories and columns of the outputs) with its
    value and docstring, read from the module's source.
``bm-ray-error-codes``
    Every ``ApiError(status, code, message, field)`` the endpoint's code can raise, found in
    ``bm_ray/serve/*.py`` by walking its syntax tree.
``bm-ray-openapi-route`` (argument: ``METHOD /path``)
    One route of ``docs/openapi.json``: description, request body fields, responses and their schemas.
    A route of the document that no page renders is a build error.
``bm-ray-helm-values``
    Every key of ``helm/bm-ray/values.schema.json`` with its type, allowed values, the default from
    ``values.yaml`` and the comment written beside it there.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import yaml
from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "docs" / "openapi.json"
VALUES = ROOT / "helm" / "bm-ray" / "values.yaml"
SCHEMA = ROOT / "helm" / "bm-ray" / "values.schema.json"
SERVE_DIR = ROOT / "bm_ray" / "serve"

logger = logging.getLogger(__name__)

REJECT_MEANINGS = {
    "empty_text": "The text is empty or whitespace only once its fields are joined (null fields count as empty).",
    "not_a_string": "A number, list, object or boolean where a text (or label) is expected.",
    "missing_field": "A text field, or an explicitly named id or label field, is absent from the record.",
    "malformed_record": "A JSONL line that is not a JSON object (or nests deeper than 500 levels), a CSV line "
    "with the wrong number of fields or an unterminated quote, or a Parquet file pyarrow cannot decode (one "
    "reject, the file as its source, for the rows not read). One bad line or file never fails the job.",
    "invalid_utf8": "More than 10% of the record's characters are undecodable. Below that the bytes are "
    "replaced with U+FFFD and the row is kept (counted as `rows_utf8_repaired`).",
    "too_long": "A line (or JSON array element) over `max_line_bytes` (16 MiB by default, never read whole), "
    "or a text over `reject_text_chars` (1,000,000 characters). Texts over `max_text_chars` (100,000) are "
    "kept, truncated, and counted as `rows_truncated`.",
    "duplicate_id": "A later row with an id already seen, in listing order: inputs in the order given, files "
    "sorted by path, then rows (with `dedupe: ids`, the default).",
}
"""What each reject reason means; the directive fails the build when this and the code disagree."""

FIELD_EXPRESSIONS = {
    "check_texts:list_field": "the list of texts: `texts`, `instances`, `inputs[0].data` (V2) or `inputs` (TEI)",
    "decode_bytes_tensor:field": "`inputs[0]`",
    "HEADER_LENGTH": "`inference-header-content-length`",
    "f'inputs[0].data[{i}]'": "`inputs[0].data[N]`",
    "f'outputs[{i}].name'": "`outputs[N].name`",
    "field": "the failing field, e.g. `texts.0`, `instances.1.text` or `min_score`",
    "item_field(i)": "the text: `texts.N`, `instances.N.text`; `instances[N]` (V1), `inputs[0].data[N]` (V2), "
    "`inputs[N]` (TEI)",
    "item_field(cause.index)": "the text: `texts.N`, `instances.N.text`; `instances[N]` (V1), `inputs[0].data[N]` "
    "(V2), `inputs[N]` (TEI)",
}
"""How a computed `field` argument reads, by ``function:source`` or by its source alone."""

STATUS_EXPRESSIONS = {
    "exc.status_code": "the HTTP status (404, 405, …)",
    "status": "503, or 429 (``overload_status``)",
}
"""How a computed `status` argument reads, by its source."""


def cell(text: str) -> str:
    """`text` fit for one cell of an RST list-table (one line, no stray markup breaking the table)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def list_table(header: list[str], rows: list[list[str]], widths: list[int] | None = None) -> list[str]:
    """RST lines of a list-table."""
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [header, *rows]:
        for i, value in enumerate(row):
            lines.append(("   * - " if i == 0 else "     - ") + (cell(value) or " "))
    lines.append("")
    return lines


def md_inline(text: str) -> str:
    """Markdown-style inline code (`x`) as RST literals (``x``); emphasis characters escaped."""
    text = re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)
    return text


class GeneratedDirective(Directive):
    """Base: subclasses return RST lines, parsed in place (use them inside ```{eval-rst}`` blocks of MyST
    pages: a Markdown state would read the lines as Markdown)."""

    depends: ClassVar[tuple[Path, ...]] = ()

    def rst(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        for path in self.depends:
            env.note_dependency(str(path))
        container = nodes.container()
        source = self.state.document.current_source or "<generated>"
        self.state.nested_parse(StringList(self.rst(), source=source), self.content_offset, container)
        return container.children


# ---------------------------------------------------------------------------------------- reject reasons


def reject_reasons() -> tuple[str, ...]:
    """The code's reject vocabulary (bm_ray.layout, else bm_ray.corpus)."""
    for module in ("bm_ray.layout", "bm_ray.corpus"):
        try:
            return tuple(importlib.import_module(module).REJECT_REASONS)
        except (ImportError, AttributeError):
            continue
    raise RuntimeError("REJECT_REASONS not found in bm_ray.layout or bm_ray.corpus")


class RejectReasons(GeneratedDirective):
    depends = (ROOT / "bm_ray" / "layout.py", ROOT / "bm_ray" / "corpus" / "rows.py")

    def rst(self) -> list[str]:
        reasons = reject_reasons()
        undescribed = [r for r in reasons if r not in REJECT_MEANINGS]
        stale = [r for r in REJECT_MEANINGS if r not in reasons]
        if undescribed or stale:
            raise self.error(
                f"REJECT_REASONS and docs/_ext/bm_ray_docs.py disagree: undescribed {undescribed}, "
                f"no longer in the code {stale}"
            )
        rows = [[f"``{r}``", md_inline(REJECT_MEANINGS[r])] for r in reasons]
        return list_table(["reason", "the row was rejected because"], rows, [20, 80])


# ------------------------------------------------------------------------------------------------ layout


def module_constants(module: str) -> list[tuple[str, Any, str]]:
    """(name, value, docstring) of every UPPER_CASE constant assigned at the top of `module`'s source."""
    mod = importlib.import_module(module)
    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    out = []
    body = tree.body
    for i, stmt in enumerate(body):
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target = stmt.targets[0]
        if not isinstance(target, ast.Name) or not target.id.isupper():
            continue
        doc = ""
        nxt = body[i + 1] if i + 1 < len(body) else None
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            doc = nxt.value.value
        out.append((target.id, getattr(mod, target.id), doc))
    return out


def rst_docstring(doc: str) -> str:
    """A docstring's Sphinx roles as plain literals (the table is not autodoc: no targets for them)."""
    doc = re.sub(r":\w+:`~?([^`]+)`", r"``\1``", doc)
    return md_inline(doc)


class Layout(GeneratedDirective):
    depends = (ROOT / "bm_ray" / "layout.py",)

    def rst(self) -> list[str]:
        rows = []
        for name, value, doc in module_constants("bm_ray.layout"):
            shown = ", ".join(f"``{v}``" for v in value) if isinstance(value, tuple) else f"``{value}``"
            rows.append([f"``{name}``", shown, rst_docstring(doc)])
        return list_table(["constant", "value", "meaning"], rows, [22, 33, 45])


# ------------------------------------------------------------------------------------------- error codes


def _literal(node: ast.AST | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _message(node: ast.AST | None) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "…" for v in node.values)
    return "…"


def api_errors() -> list[dict[str, Any]]:
    """Every ``ApiError(...)`` construction in the endpoint's code, in source order."""
    found = []
    for path in sorted(SERVE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ApiError"):
                    continue
                args = {k.arg: k.value for k in node.keywords}
                pos = node.args
                status_node, code_node = pos[0] if pos else args.get("status"), pos[1] if len(pos) > 1 else args.get("code")
                message_node = pos[2] if len(pos) > 2 else args.get("message")
                field_node = pos[3] if len(pos) > 3 else args.get("field")
                code = _literal(code_node)
                if code is None:
                    continue
                field = _literal(field_node)
                if field is None and field_node is not None:
                    expr = ast.unparse(field_node)
                    field = FIELD_EXPRESSIONS.get(
                        f"{func.name}:{expr}", FIELD_EXPRESSIONS.get(expr, f"computed (``{expr}``)")
                    )
                elif field is not None:
                    field = f"``{field}``"
                found.append(
                    {
                        "status": _literal(status_node),
                        "status_source": ast.unparse(status_node) if status_node is not None else "",
                        "code": code,
                        "message": _message(message_node),
                        "field": field or "",
                        "retry_after": "retry_after_s" in args,
                        "where": f"{path.stem}.{func.name}",
                    }
                )
    return found


class ErrorCodes(GeneratedDirective):
    depends = tuple(sorted(SERVE_DIR.glob("*.py")))

    def rst(self) -> list[str]:
        seen: dict[tuple[Any, str, str, str], dict[str, Any]] = {}
        for err in api_errors():
            key = (err["status"], err["code"], err["message"], err["field"])
            if key in seen:
                seen[key]["where"] += f", {err['where']}"
            else:
                seen[key] = dict(err)
        errors = sorted(seen.values(), key=lambda e: (e["status"] or 999, e["code"]))
        if not errors:
            raise self.error(f"no ApiError found under {SERVE_DIR}")
        rows = []
        for e in errors:
            status = (
                str(e["status"])
                if e["status"] is not None
                else STATUS_EXPRESSIONS.get(e["status_source"], f"computed (``{e['status_source']}``)")
            )
            if e["retry_after"]:
                status += " + ``Retry-After``"
            message = md_inline(e["message"].replace("*", "\\*"))
            rows.append([status, f"``{e['code']}``", message, md_inline(e["field"]), ", ".join(f"``{w}``" for w in e["where"].split(", "))])
        return list_table(
            ["status", "error.code", "error.message (… is filled in)", "error.field", "raised in"],
            rows,
            [12, 16, 38, 18, 16],
        )


# ----------------------------------------------------------------------------------------------- OpenAPI


def openapi() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text(encoding="utf-8"))


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with a top-level `$ref` followed (component schemas and in-place `$defs`)."""
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"external $ref {ref}")
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def type_of(doc: dict[str, Any], schema: dict[str, Any]) -> str:
    """A short type expression of a JSON schema."""
    if "$ref" in schema:
        return resolve(doc, schema).get("title", "object")
    if "anyOf" in schema:
        return " | ".join(type_of(doc, s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_of(doc, schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"object of {type_of(doc, schema['additionalProperties'])}"
    if kind:
        return str(kind)
    return "any JSON"


def constraints(schema: dict[str, Any]) -> list[str]:
    out = []
    for sub in [schema, *schema.get("anyOf", [])]:
        for key, word in (("minimum", "≥"), ("maximum", "≤"), ("minItems", "items ≥"), ("minLength", "length ≥")):
            if key in sub:
                out.append(f"{word} {sub[key]}")
    return out


def field_rows(doc: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[list[str]]:
    """Rows (field, type, required, description) of an object schema, nested objects flattened."""
    schema = resolve(doc, schema)
    rows = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        path = prefix + name
        text = md_inline(resolve(doc, prop).get("description", prop.get("description", "")))
        extra = constraints(prop)
        if extra:
            text = (text + " " if text else "") + "(" + ", ".join(extra) + ")"
        rows.append([f"``{path}``", type_of(doc, prop), "yes" if name in required else "no", text])
        targets = [prop, *prop.get("anyOf", [])]
        for target in targets:
            if target.get("type") == "array" and "$ref" in target.get("items", {}):
                rows += field_rows(doc, target["items"], path + "[].")
            elif "$ref" in target:
                rows += field_rows(doc, target, path + ".")
    return rows


PROTOCOL_ERRORS = {
    "": "the error object ``{\"error\": {\"code\", \"message\", \"field\"}}``",
    "Open Inference Protocol": "the protocol's ``{\"error\": \"…\"}``",
    "KServe V1": "the protocol's ``{\"error\": \"…\"}``",
    "Hugging Face TEI": "TEI's ``{\"error\": \"…\", \"error_type\": \"…\"}``",
}
"""The error body of a route, by its OpenAPI tag (the protocol; untagged: bm-ray's own)."""


class OpenApiRoute(Directive):
    required_arguments = 2
    has_content = False

    def run(self) -> list[nodes.Node]:
        method, path = self.arguments[0].lower(), self.arguments[1]
        doc = openapi()
        try:
            operation = doc["paths"][path][method]
        except KeyError:
            raise self.error(f"{method.upper()} {path} is not a route of {OPENAPI.name}") from None
        env = self.state.document.settings.env
        env.note_dependency(str(OPENAPI))
        env.bm_ray_routes = getattr(env, "bm_ray_routes", set()) | {(method, path)}
        lines = [md_inline(operation.get("description", operation.get("summary", ""))), ""]
        body = operation.get("requestBody")
        if body:
            schema = body["content"]["application/json"]["schema"]
            lines += [".. rubric:: Request body (``application/json``)", ""]
            lines += [md_inline(resolve(doc, schema).get("description", "")), ""]
            lines += list_table(["field", "type", "required", "meaning"], field_rows(doc, schema), [22, 22, 10, 46])
        lines += [".. rubric:: Responses", ""]
        rows = []
        for status, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json", {})
            schema = content.get("schema")
            if schema:
                kind = type_of(doc, schema) if schema else ""
            else:
                error = PROTOCOL_ERRORS.get((operation.get("tags") or [""])[0], PROTOCOL_ERRORS[""])
                kind = error if status >= "400" else ""
            rows.append([status, md_inline(response.get("description", "")), kind])
        lines += list_table(["status", "when", "body"], rows, [10, 50, 40])
        ok = operation["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema")
        if ok and resolve(doc, ok).get("properties") and "$ref" in ok:
            lines += [f".. rubric:: ``{resolve(doc, ok).get('title')}`` fields", ""]
            lines += list_table(["field", "type", "required", "meaning"], field_rows(doc, ok), [22, 22, 10, 46])
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=str(OPENAPI)), self.content_offset, container)
        return container.children


def check_routes(app: Sphinx, env: Any) -> None:
    """Every route of the OpenAPI document is rendered on some page."""
    rendered = getattr(env, "bm_ray_routes", set())
    for path, methods in openapi()["paths"].items():
        for method in methods:
            if (method, path) not in rendered:
                logger.warning(
                    "docs/openapi.json route %s %s is not rendered: add a `bm-ray-openapi-route` directive",
                    method.upper(),
                    path,
                )


def merge_routes(app: Sphinx, env: Any, docnames: Any, other: Any) -> None:
    env.bm_ray_routes = getattr(env, "bm_ray_routes", set()) | getattr(other, "bm_ray_routes", set())


# ------------------------------------------------------------------------------------------- Helm values


def value_comments() -> dict[str, str]:
    """The comment written beside each key of values.yaml, by dotted key path."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in VALUES.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\s*)(- )?([A-Za-z_][\w.-]*):(.*)$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match.group(1)) + (2 if match.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match.group(3)
        path = ".".join([p for _, p in stack] + [key])
        rest = match.group(4)
        if "#" in rest:
            comments[path] = rest.split("#", 1)[1].strip()
        stack.append((indent, key))
    return comments


SPEC_SUBTREES = {
    "train.spec": ":ref:`TrainSpec <train-spec>`",
    "classify.spec": ":ref:`ClassifySpec <classify-spec>`",
    "serve.config": "a Ray Serve config whose application ``args`` are a :ref:`ServeSpec <serve-spec>`",
}


def schema_type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(f"``{v}``" for v in schema["enum"])
    if "const" in schema:
        return f"``{schema['const']}``"
    if "anyOf" in schema:
        return " or ".join(schema_type(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return "list"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {schema_type(schema['additionalProperties'])}"
    return str(kind)


def schema_rules(schema: dict[str, Any]) -> str:
    rules = []
    for sub in [schema, *schema.get("anyOf", [])]:
        for key, word in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("minItems", "items ≥")):
            if key in sub:
                rules.append(f"{word} {sub[key]}")
        if "pattern" in sub:
            rules.append(f"matches ``{sub['pattern']}``")
    if schema.get("required"):
        rules.append("requires " + ", ".join(f"``{r}``" for r in schema["required"]))
    if schema.get("additionalProperties") is False:
        rules.append("no other keys")
    return "; ".join(dict.fromkeys(rules))


def default_of(values: Any, path: str, leaf: bool) -> str:
    """The default of key `path` in values.yaml (blank for a section whose keys are listed below it)."""
    node = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return "(unset)"
        node = node[part]
    if not leaf:
        return ""
    return f"``{json.dumps(node)}``"


class HelmValues(GeneratedDirective):
    depends = (VALUES, SCHEMA)

    def rst(self) -> list[str]:
        schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
        values = yaml.safe_load(VALUES.read_text(encoding="utf-8"))
        comments = value_comments()
        rows: list[list[str]] = []

        def walk(node: dict[str, Any], prefix: str) -> None:
            for key, sub in node.get("properties", {}).items():
                path = f"{prefix}{key}"
                meaning = md_inline(comments.get(path, ""))
                if path in SPEC_SUBTREES:
                    meaning = (meaning + ". " if meaning else "") + "See " + SPEC_SUBTREES[path] + "."
                rows.append([f"``{path}``", schema_type(sub), schema_rules(sub), default_of(values, path, "properties" not in sub and path not in SPEC_SUBTREES), meaning])
                if path not in SPEC_SUBTREES:
                    walk(sub, path + ".")

        walk(schema, "")
        return list_table(["key", "type", "rules", "default", "meaning (values.yaml)"], rows, [22, 14, 18, 14, 32])


# ------------------------------------------------------------------------------------------------ the CLI

LONE_STAR = re.compile(r"(?<![*\\])\*(?!\*)")


def escape_help(app: Sphinx, ctx: Any, lines: list[str]) -> None:
    """sphinx-click reads the CLI's help texts as RST: a glob's ``*`` (``jobs/*.yaml``) is not emphasis."""
    lines[:] = [LONE_STAR.sub(r"\\*", line) for line in lines]


# -------------------------------------------------------------------------------------------------- setup


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("bm-ray-reject-reasons", RejectReasons)
    app.add_directive("bm-ray-layout", Layout)
    app.add_directive("bm-ray-error-codes", ErrorCodes)
    app.add_directive("bm-ray-openapi-route", OpenApiRoute)
    app.add_directive("bm-ray-helm-values", HelmValues)
    app.connect("env-check-consistency", check_routes)
    app.connect("env-merge-info", merge_routes)
    for part in ("description", "options", "arguments", "epilog"):
        app.connect(f"sphinx-click-process-{part}", escape_help)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
