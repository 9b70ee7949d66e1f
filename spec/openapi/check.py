#!/usr/bin/env python3
"""Checks one HTTP answer, or one request, against an OpenAPI 3.0 document.

    check.py [--loose] [--content-type TYPE] DOC METHOD PATH STATUS [BODY]
    check.py [--loose] --request [--headers FILE] [-H 'Name: value']... [--body FILE]
             DOC METHOD PATH

The first form validates an answer: BODY is a file holding the answer's body (`-` or nothing:
standard input). The second validates a request: its method and path must be an operation of
the document, its parameters (header, query, path, cookie) must be present when required and
match their schemas, its security requirement must be met, and a body is allowed only where
the operation takes one. `--headers FILE` is a JSON object of header names to values (the
emulator's request record has that shape); `-H` adds one header.

Every violation is printed as `violation: WHERE: WHAT`; the exit status is 0 when there is
none, 1 when there is any, 2 when the check could not be made (usage, unreadable document).
Instance string values are never quoted in the output (an answer body carries API keys).

Schemas are checked as OpenAPI 3.0 reads JSON Schema: type (with `nullable`), enum, format
(date-time, date, uuid, int32, int64), the string/number/array/object bounds, pattern,
properties, required, additionalProperties, items, allOf/oneOf/anyOf/not, local $ref;
readOnly/writeOnly members are judged by direction. By default the check is strict: a member
that no applicable schema declares (and that no additionalProperties allows) is a violation,
so an emulator cannot invent fields; `--loose` gives plain JSON Schema semantics instead.

A status the operation does not document (nor a `4XX` range nor `default`) is checked, when it
is an error (>= 400), against the document's shared response for that status
(components/responses: BadRequest, Unauthorized, ...), else against its error envelope
(`--error-schema`, APIResponseBase); a note says so. The same holds for an error answer to a
method or path that the document does not have (the API's 404 and 405).
"""

import argparse
import datetime
import json
import re
import sys
from urllib.parse import parse_qsl, unquote, urlsplit

try:
    import yaml
except ImportError:   # pragma: no cover - depends on the machine
    sys.stderr.write("check.py: PyYAML is missing (Debian: apt-get install python3-yaml)\n")
    sys.exit(2)

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# The document's shared responses, by the status they are written for.
SHARED_RESPONSES = {400: "BadRequest", 401: "Unauthorized", 402: "PaymentRequired",
                    403: "Forbidden", 404: "NotFound", 408: "Timeout", 409: "Conflict",
                    412: "PreconditionFailed"}
ERROR_SCHEMA = "#/components/schemas/APIResponseBase"
ALL = None    # "every member of the object was evaluated" (additionalProperties allows all)


class DocError(Exception):
    """The document cannot be used (unreadable, a $ref that leads nowhere, ...)."""


class Doc:
    def __init__(self, path):
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            with open(path, "rb") as f:
                self.root = yaml.load(f, Loader=loader)
        except (OSError, yaml.YAMLError) as e:
            raise DocError("cannot read %s: %s" % (path, e))
        if not isinstance(self.root, dict) or not isinstance(self.root.get("paths"), dict):
            raise DocError("%s is not an OpenAPI document (no paths)" % path)
        version = str(self.root.get("openapi", ""))
        if not version.startswith("3.0"):
            raise DocError("%s: OpenAPI %r, only 3.0.x is supported" % (path, version))
        self.paths = self._compile_paths()

    def resolve(self, ref):
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise DocError("unsupported $ref %r (only local references)" % (ref,))
        node = self.root
        for part in ref[2:].split("/"):
            part = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise DocError("$ref %s leads nowhere" % ref)
        return node

    def deref(self, node):
        """Follow $ref (a chain of them) to the node it names."""
        seen = set()
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in seen:
                raise DocError("$ref cycle through %s" % ref)
            seen.add(ref)
            node = self.resolve(ref)
        return node

    def _compile_paths(self):
        out = []
        for template, item in self.root["paths"].items():
            names, pattern, pos = [], "", 0
            for m in re.finditer(r"\{([^}/]+)\}", template):
                pattern += re.escape(template[pos:m.start()]) + "([^/]+)"
                names.append(m.group(1))
                pos = m.end()
            pattern += re.escape(template[pos:])
            # Literal paths win over templated ones (OpenAPI's matching rule).
            out.append((len(names), template, re.compile(pattern + r"\Z"), names, item))
        out.sort(key=lambda e: e[0])
        return out

    def operation(self, method, path):
        """(template, path item, operation, path parameters), or None when not documented."""
        for _, template, rx, names, item in self.paths:
            m = rx.match(path)
            if m:
                item = self.deref(item)
                op = item.get(method.lower()) if method.lower() in METHODS else None
                if op is None:
                    return None
                return template, item, op, {n: unquote(v) for n, v in zip(names, m.groups())}
        return None


def describe(value):
    """The JSON type of a value, for messages (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def same(a, b):
    """JSON equality (true is not 1, 1 equals 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def format_problem(fmt, value):
    if fmt == "int32" and isinstance(value, int) and not -2**31 <= value < 2**31:
        return "outside int32"
    if fmt == "int64" and isinstance(value, int) and not -2**63 <= value < 2**63:
        return "outside int64"
    if not isinstance(value, str):
        return None
    if fmt in ("date-time", "date"):
        text = value if fmt == "date-time" else value + "T00:00:00Z"
        if not DATE_TIME.match(text):
            return "not an RFC 3339 %s" % fmt
        try:
            datetime.datetime.strptime(text[:19].replace("t", "T").replace(" ", "T"),
                                       "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            return "not a valid %s" % fmt
    if fmt == "uuid" and not UUID.match(value):
        return "not a uuid"
    return None


class Checker:
    """Validates instances against schemas of `doc`, collecting violations."""

    def __init__(self, doc, strict=True, direction="response"):
        self.doc, self.strict, self.direction = doc, strict, direction
        self.problems = []

    def problem(self, where, what):
        self.problems.append((where, what))

    def check(self, schema, value, where):
        """Apply `schema` to `value` at `where`; in strict mode, then report members of an
        object that no applicable schema declared."""
        seen = self.apply(schema, value, where)
        if self.strict and isinstance(value, dict) and seen is not ALL:
            for name in sorted(set(value) - seen):
                self.problem("%s.%s" % (where, name), "member not declared by the schema")

    def trial(self, schema, value, where):
        """Apply `schema` on the side: (violations, evaluated members)."""
        saved, self.problems = self.problems, []
        try:
            seen = self.apply(schema, value, where)
            return self.problems, seen
        finally:
            self.problems = saved

    def apply(self, schema, value, where):
        """Check one schema in place; returns the members of an object it evaluated (a set,
        or ALL). Children are checked with `check`, so strictness applies at each level."""
        schema = self.doc.deref(schema)
        if schema is True or schema == {}:
            return ALL if schema is True else set()
        if not isinstance(schema, dict):
            raise DocError("a schema at %s is not an object" % where)
        seen = set()

        def merge(more):
            nonlocal seen
            seen = ALL if (seen is ALL or more is ALL) else seen | more

        # In-place applicators first: their evaluated members add to this level's.
        for sub in schema.get("allOf", []):
            merge(self.apply(sub, value, where))
        for word in ("anyOf", "oneOf"):
            if word not in schema:
                continue
            passed = []
            best = None
            for sub in schema[word]:
                problems, sub_seen = self.trial(sub, value, where)
                if not problems:
                    passed.append(sub_seen)
                elif best is None or len(problems) < len(best):
                    best = problems
            if not passed:
                self.problem(where, "matches none of the %d %s alternatives" % (len(schema[word]), word))
                self.problems.extend((w, "(closest alternative) " + p) for w, p in best or [])
            elif word == "oneOf" and len(passed) > 1:
                self.problem(where, "matches %d oneOf alternatives (exactly one expected)" % len(passed))
            for s in passed:
                merge(s)
        if "not" in schema and not self.trial(schema["not"], value, where)[0]:
            self.problem(where, "matches the schema under `not`")

        if value is None:
            if schema.get("nullable") is True:
                return seen
            if "type" in schema:
                self.problem(where, "null where %s is expected (not nullable)" % schema["type"])
                return ALL
        if "enum" in schema and not any(same(value, e) for e in schema["enum"]):
            self.problem(where, "%s not one of the allowed values (%s)" % (
                describe(value), ", ".join(json.dumps(e) for e in schema["enum"])))
        expected = schema.get("type")
        if expected is not None and not self.type_ok(expected, value):
            self.problem(where, "%s where %s is expected" % (describe(value), expected))
            return ALL   # its members are not judged as well: one violation says it
        if "format" in schema:
            trouble = format_problem(schema["format"], value)
            if trouble:
                self.problem(where, trouble)
        if isinstance(value, str):
            self.string(schema, value, where)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self.number(schema, value, where)
        elif isinstance(value, list):
            self.array(schema, value, where)
        elif isinstance(value, dict):
            merge(self.object(schema, value, where))
        return seen

    @staticmethod
    def type_ok(expected, value):
        if expected == "object":
            return isinstance(value, dict)
        if expected == "array":
            return isinstance(value, list)
        if expected == "string":
            return isinstance(value, str)
        if expected == "boolean":
            return isinstance(value, bool)
        if expected == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if expected == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        raise DocError("unknown type %r" % (expected,))

    def string(self, schema, value, where):
        if "minLength" in schema and len(value) < schema["minLength"]:
            self.problem(where, "shorter than %d characters" % schema["minLength"])
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            self.problem(where, "longer than %d characters" % schema["maxLength"])
        if "pattern" in schema:
            try:
                rx = re.compile(schema["pattern"])
            except re.error:
                return   # an ECMA pattern Python cannot read: not judged
            if not rx.search(value):
                self.problem(where, "does not match the pattern %s" % schema["pattern"])

    def number(self, schema, value, where):
        if "minimum" in schema:
            low, excl = schema["minimum"], schema.get("exclusiveMinimum") is True
            if value < low or (excl and value == low):
                self.problem(where, "%r below the minimum %r%s" % (value, low, " (exclusive)" if excl else ""))
        if "maximum" in schema:
            high, excl = schema["maximum"], schema.get("exclusiveMaximum") is True
            if value > high or (excl and value == high):
                self.problem(where, "%r above the maximum %r%s" % (value, high, " (exclusive)" if excl else ""))
        if "multipleOf" in schema and (value / schema["multipleOf"]) % 1:
            self.problem(where, "%r is not a multiple of %r" % (value, schema["multipleOf"]))

    def array(self, schema, value, where):
        if "minItems" in schema and len(value) < schema["minItems"]:
            self.problem(where, "fewer than %d items" % schema["minItems"])
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            self.problem(where, "more than %d items" % schema["maxItems"])
        if schema.get("uniqueItems") is True:
            for i, v in enumerate(value):
                if any(same(v, w) for w in value[:i]):
                    self.problem("%s[%d]" % (where, i), "repeats an earlier item (uniqueItems)")
        if "items" in schema:
            for i, v in enumerate(value):
                self.check(schema["items"], v, "%s[%d]" % (where, i))

    def object(self, schema, value, where):
        props = schema.get("properties", {})
        skip = "readOnly" if self.direction == "request" else "writeOnly"
        for name in schema.get("required", []):
            sub = self.doc.deref(props.get(name, {}))
            if name not in value and not (isinstance(sub, dict) and sub.get(skip) is True):
                self.problem(where, "required member %r is missing" % name)
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            self.problem(where, "fewer than %d members" % schema["minProperties"])
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            self.problem(where, "more than %d members" % schema["maxProperties"])
        for name, sub in props.items():
            if name in value:
                target = self.doc.deref(sub)
                if isinstance(target, dict) and target.get(skip) is True:
                    self.problem("%s.%s" % (where, name), "%s member sent in a %s" % (skip, self.direction))
                self.check(sub, value[name], "%s.%s" % (where, name))
        extra = schema.get("additionalProperties")
        rest = [k for k in value if k not in props]
        if extra is False:
            for name in rest:
                self.problem("%s.%s" % (where, name), "member not allowed (additionalProperties: false)")
            return set(props)
        if isinstance(extra, dict):
            for name in rest:
                self.check(extra, value[name], "%s.%s" % (where, name))
            return ALL
        return ALL if extra is True else set(props)


# ---- answers -----------------------------------------------------------------------------

def parse_json(text):
    """Strict JSON: no NaN/Infinity, no repeated member names. ValueError otherwise."""
    def no_constant(name):
        raise ValueError("%s is not JSON" % name)

    def pairs(items):
        names = [k for k, _ in items]
        if len(set(names)) != len(names):
            raise ValueError("a member name is repeated in one object")
        return dict(items)
    return json.loads(text, parse_constant=no_constant, object_pairs_hook=pairs)


def pick_response(doc, op, status, error_schema, notes):
    """The response object to check `status` against: (response or None, label)."""
    responses = op.get("responses", {}) if op else {}
    for key in (str(status), "%dXX" % (status // 100), "%dxx" % (status // 100), "default"):
        if key in responses:
            return doc.deref(responses[key]), "response %s" % key
    if status < 400:
        return None, None
    shared = doc.root.get("components", {}).get("responses", {})
    name = SHARED_RESPONSES.get(status)
    if name in shared:
        notes.append("status %d is not documented here: checked against the shared response %s"
                     % (status, name))
        return doc.deref(shared[name]), "shared response " + name
    notes.append("status %d is not documented here: checked against the error envelope %s"
                 % (status, error_schema))
    return {"content": {"application/json": {"schema": {"$ref": error_schema}}}}, error_schema


def media_of(content, content_type):
    """The media type object matching `content_type` (None: any JSON one)."""
    if content_type is None:
        for key in content:
            if key.split(";")[0].strip().lower() in ("application/json", "*/*") or key.endswith("+json"):
                return key, content[key]
        key = next(iter(content))
        return key, content[key]
    wanted = content_type.split(";")[0].strip().lower()
    for key, media in content.items():
        k = key.split(";")[0].strip().lower()
        if k == wanted or k == "*/*" or (k.endswith("/*") and wanted.startswith(k[:-1])):
            return key, media
    return None, None


def check_body(doc, checker, content, content_type, text, where):
    key, media = media_of(content, content_type)
    if media is None:
        checker.problem(where, "content type %s is not documented (%s)" % (
            content_type, ", ".join(content)))
        return
    media = doc.deref(media)
    is_json = key.split(";")[0].strip().lower() in ("application/json", "*/*") or key.endswith("+json")
    if not is_json or "schema" not in media:
        return
    try:
        value = parse_json(text)
    except ValueError as e:
        checker.problem(where, "not JSON (%s)" % str(e).split(":")[0])
        return
    checker.check(media["schema"], value, where)


def check_response(doc, args, status, text):
    checker, notes = Checker(doc, strict=not args.loose, direction="response"), []
    path = urlsplit(args.path).path
    found = doc.operation(args.method, path)
    op = found[2] if found else None
    if found is None:
        if status < 400:
            checker.problem("operation", "%s %s is not in the document" % (args.method.upper(), path))
            return checker.problems, notes
        notes.append("%s %s is not in the document: an error answer is still checked"
                     % (args.method.upper(), path))
    response, label = pick_response(doc, op, status, args.error_schema, notes)
    if response is None:
        checker.problem("status", "%d is not documented for %s %s" % (status, args.method.upper(), found[0]))
        return checker.problems, notes
    content = response.get("content")
    if not content:
        if text.strip():
            checker.problem("body", "%s documents no body, yet one was sent" % label)
        return checker.problems, notes
    check_body(doc, checker, content, args.content_type, text, "body")
    return checker.problems, notes


# ---- requests ----------------------------------------------------------------------------

def coerce(doc, schema, text):
    """A parameter's text as the type its schema wants: (value, None) or (None, trouble)."""
    s = doc.deref(schema or {})
    kind = s.get("type")
    if kind is None:
        for sub in s.get("allOf", []):
            kind = kind or doc.deref(sub).get("type")
    if kind == "integer":
        if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
            return None, "not an integer"
        return int(text), None
    if kind == "number":
        try:
            return float(text), None
        except ValueError:
            return None, "not a number"
    if kind == "boolean":
        if text.strip() not in ("true", "false"):
            return None, "not true/false"
        return text.strip() == "true", None
    if kind == "array":
        items = s.get("items", {})
        out = []
        for part in text.split(","):
            v, trouble = coerce(doc, items, part.strip())
            if trouble:
                return None, trouble
            out.append(v)
        return out, None
    return text.strip(), None


def check_request(doc, args, headers, body):
    checker, notes = Checker(doc, strict=not args.loose, direction="request"), []
    split = urlsplit(args.path)
    found = doc.operation(args.method, split.path)
    if found is None:
        checker.problem("operation", "%s %s is not in the document" % (args.method.upper(), split.path))
        return checker.problems, notes
    template, item, op, path_params = found
    params = {}
    for p in item.get("parameters", []) + op.get("parameters", []):   # the operation's win
        p = doc.deref(p)
        params[(p["name"].lower() if p["in"] == "header" else p["name"], p["in"])] = p
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    cookies = dict(c.strip().split("=", 1) for c in headers.get("cookie", "").split(";") if "=" in c)
    for (name, where), p in sorted(params.items()):
        given = {"header": headers, "query": query, "path": path_params, "cookie": cookies}[where].get(name)
        label = "%s %s" % (where, p["name"])
        if given is None:
            if p.get("required") or where == "path":
                checker.problem(label, "required %s parameter is missing" % where)
            continue
        if "schema" not in p:
            continue
        value, trouble = coerce(doc, p["schema"], given)
        if trouble:
            checker.problem(label, trouble)
            continue
        checker.check(p["schema"], value, label)
    check_security(doc, checker, op, headers, query, cookies)
    check_accept(doc, checker, op, headers.get("accept"))
    length = headers.get("content-length", "").strip()
    sent = bool(body) or (length.isdigit() and int(length) > 0) or \
        "chunked" in headers.get("transfer-encoding", "").lower()
    request_body = doc.deref(op["requestBody"]) if "requestBody" in op else None
    if request_body is None:
        if sent:
            checker.problem("body", "%s %s takes no request body, yet one was sent"
                            % (args.method.upper(), template))
    elif not sent:
        if request_body.get("required"):
            checker.problem("body", "the request body is required")
    elif body is not None and request_body.get("content"):
        check_body(doc, checker, request_body["content"], headers.get("content-type"),
                   body, "body")
    return checker.problems, notes


def check_accept(doc, checker, op, accept):
    """An Accept header must admit a media type of some documented 2xx answer."""
    offered = set()
    for status, response in op.get("responses", {}).items():
        if str(status).startswith("2"):
            offered.update(k.split(";")[0].strip().lower()
                           for k in doc.deref(response).get("content", {}))
    if accept is None or not offered:
        return
    for item in accept.split(","):
        kind, _, params = item.partition(";")
        kind = kind.strip().lower()
        if re.search(r"(^|;)\s*q\s*=\s*0(\.0*)?\s*($|;)", params):
            continue   # q=0: explicitly not acceptable
        for media in offered:
            if kind in ("*/*", media) or (kind.endswith("/*") and media.startswith(kind[:-1])):
                return
    checker.problem("header Accept", "admits none of the documented answers (%s)" % ", ".join(sorted(offered)))


def check_security(doc, checker, op, headers, query, cookies):
    requirements = op.get("security", doc.root.get("security", []))
    if not requirements:
        return
    schemes = doc.root.get("components", {}).get("securitySchemes", {})
    wanted = []

    def met(name):
        s = doc.deref(schemes.get(name, {}))
        if s.get("type") == "apiKey":
            place = {"header": headers, "query": query, "cookie": cookies}.get(s.get("in"), {})
            key = s.get("name", "").lower() if s.get("in") == "header" else s.get("name")
            wanted.append("%s (%s %s)" % (name, s.get("in"), s.get("name")))
            return bool(place.get(key))
        if s.get("type") == "http":
            scheme = s.get("scheme", "").lower()
            wanted.append("%s (Authorization: %s)" % (name, scheme))
            auth = headers.get("authorization", "").split(None, 1)
            return len(auth) == 2 and auth[0].lower() == scheme
        wanted.append("%s (%s, not judged)" % (name, s.get("type")))
        return True

    if not any(all(met(n) for n in req) for req in requirements):
        checker.problem("security", "no credentials for any of: " + "; ".join(dict.fromkeys(wanted)))


# ---- command line ------------------------------------------------------------------------

def read_text(path):
    if path in (None, "-"):
        return sys.stdin.buffer.read().decode("utf-8", "replace")
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Check an answer (or, with --request, a request) against an OpenAPI 3.0 document.")
    ap.add_argument("doc", help="the OpenAPI document (YAML or JSON)")
    ap.add_argument("method")
    ap.add_argument("path", help="the request path, query string allowed")
    ap.add_argument("rest", nargs="*", metavar="STATUS [BODY]",
                    help="answers: the status and a file with the body (- or none: stdin)")
    ap.add_argument("--request", action="store_true", help="check a request instead of an answer")
    ap.add_argument("--headers", metavar="FILE", help="request headers as a JSON object")
    ap.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="one request header (repeatable)")
    ap.add_argument("--body", metavar="FILE", help="the request body")
    ap.add_argument("--content-type", help="the answer's Content-Type (checked when given)")
    ap.add_argument("--error-schema", default=ERROR_SCHEMA,
                    help="error envelope for undocumented error statuses (%(default)s)")
    ap.add_argument("--loose", action="store_true",
                    help="plain JSON Schema: members no schema declares are allowed")
    args = ap.parse_args(argv)
    try:
        doc = Doc(args.doc)
        if args.request:
            if args.rest:
                ap.error("--request takes no STATUS/BODY (use --body)")
            headers = {}
            if args.headers:
                loaded = json.loads(read_text(args.headers))
                if not isinstance(loaded, dict):
                    ap.error("--headers: a JSON object expected")
                headers.update((str(k).lower(), str(v)) for k, v in loaded.items())
            for h in args.header:
                name, sep, value = h.partition(":")
                if not sep:
                    ap.error("-H wants 'Name: value'")
                headers[name.strip().lower()] = value.strip()
            body = read_text(args.body) if args.body else None
            problems, notes = check_request(doc, args, headers, body)
            what = "request %s %s" % (args.method.upper(), urlsplit(args.path).path)
        else:
            if not 1 <= len(args.rest) <= 2 or not re.fullmatch(r"[1-9][0-9]{2}", args.rest[0]):
                ap.error("answers need STATUS (100..999) and at most one BODY file")
            status = int(args.rest[0])
            text = read_text(args.rest[1] if len(args.rest) > 1 else None)
            problems, notes = check_response(doc, args, status, text)
            what = "answer %d to %s %s" % (status, args.method.upper(), urlsplit(args.path).path)
    except DocError as e:
        sys.stderr.write("check.py: %s\n" % e)
        return 2
    except (OSError, ValueError) as e:
        sys.stderr.write("check.py: %s: %s\n" % (e.__class__.__name__, str(e).split("\n")[0]))
        return 2
    for note in notes:
        print("note: " + note)
    for where, what_ in problems:
        print("violation: %s: %s" % (where, what_))
    print("%s: %s" % (what, "%d violation(s)" % len(problems) if problems else "valid"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
