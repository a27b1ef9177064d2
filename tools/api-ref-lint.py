#!/usr/bin/env python3
"""tools/api-ref-lint.py - the api-ref documents the whole API.

Checks, against api-ref/openapi.json (Python 3 standard library only):

* every operation has a ``.. rest_method:: METHOD /path`` in an .inc file
  of api-ref/source, and every rest_method is an operation;
* in each operation's section, every path and query parameter is listed
  (same name, same ``in``), and so are every property of its request body
  and of its success response body, at any depth (by name; the ``rel`` and
  ``href`` of links are documented once);
* every section's status codes include the documented success code, and
  nothing else is listed as success;
* every parameter of parameters.yaml is used, and every one used exists;
* every sample a literalinclude names exists, and every sample is shown.

Exits 1, listing the problems, if any check fails.
"""

import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "api-ref", "source")
OPENAPI = os.path.join(ROOT, "api-ref", "openapi.json")


def load_parameters(path):
    """{key: {field: value}} from parameters.yaml (its flat shape only)."""
    params, key = {}, None
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            m = re.match(r"^([A-Za-z0-9_.-]+):\s*$", line)
            if m:
                key = m.group(1)
                params[key] = {}
                continue
            m = re.match(r"^  (in|required|type):\s*(\S+)\s*$", line)
            if m and key:
                params[key][m.group(1)] = m.group(2)
    return params


def sections(text):
    """Split an .inc into (method, path, section text) per rest_method."""
    out = []
    parts = re.split(r"^\.\. rest_method::\s*", text, flags=re.M)
    for part in parts[1:]:
        first, _, rest = part.partition("\n")
        method, _, path = first.strip().partition(" ")
        # The section ends where the next one's title starts (text before
        # the next rest_method belongs to it too, harmlessly).
        out.append((method.upper(), path.strip(), rest))
    return out


def parameter_lists(text):
    """[(display name, key)] of every rest_parameters block in text."""
    entries = []
    for block in re.finditer(
            r"^\.\. rest_parameters::\s*parameters\.yaml\s*\n((?:\s*\n|   .*\n)+)",
            text, flags=re.M):
        for m in re.finditer(r"^\s+- ([^:]+):\s*(\S+)\s*$", block.group(1), flags=re.M):
            entries.append((m.group(1).strip(), m.group(2)))
    return entries


def status_codes(text, kind):
    codes = []
    for block in re.finditer(
            r"^\.\. rest_status_code::\s*%s\s+status\.yaml\s*\n((?:\s*\n|   .*\n)+)" % kind,
            text, flags=re.M):
        codes += re.findall(r"^\s+- (\d{3})", block.group(1), flags=re.M)
    return codes


def schema_names(schema, doc, seen=()):
    """Every property name in schema, at any depth (not inside Link)."""
    if not isinstance(schema, dict):
        return set()
    ref = schema.get("$ref")
    if ref:
        if ref.endswith("/Link") or ref in seen:
            return set()
        target = doc
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        return schema_names(target, doc, seen + (ref,))
    names = set()
    for name, sub in (schema.get("properties") or {}).items():
        names.add(name)
        names |= schema_names(sub, doc, seen)
    if "items" in schema:
        names |= schema_names(schema["items"], doc, seen)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            names |= schema_names(sub, doc, seen)
    return names


def main():
    problems = []
    with open(OPENAPI) as f:
        doc = json.load(f)
    params = load_parameters(os.path.join(SOURCE, "parameters.yaml"))
    incs = sorted(glob.glob(os.path.join(SOURCE, "*.inc")))
    rsts = incs + sorted(glob.glob(os.path.join(SOURCE, "*.rst")))
    texts = {p: open(p).read() for p in rsts}

    documented = {}
    for p in incs:
        for method, path, body in sections(texts[p]):
            if (method, path) in documented:
                problems.append("%s %s is documented twice" % (method, path))
            documented[(method, path)] = body

    for path, item in doc["paths"].items():
        common = item.get("parameters", [])
        for method, op in item.items():
            if method == "parameters":
                continue
            key = (method.upper(), path)
            where = "%s %s" % key
            if key not in documented:
                problems.append("%s: no rest_method in api-ref/source/*.inc" % where)
                continue
            section = documented.pop(key)
            entries = parameter_lists(section)
            listed = {(name.split(".")[-1], params.get(k, {}).get("in")) for name, k in entries}
            for prm in common + op.get("parameters", []):
                if (prm["name"], prm["in"]) not in listed:
                    problems.append("%s: %s parameter %s not documented"
                                    % (where, prm["in"], prm["name"]))
            body_names = {n for n, i in listed if i == "body"}
            schema = (op.get("requestBody", {}).get("content", {})
                      .get("application/json", {}).get("schema"))
            for name in sorted(schema_names(schema, doc) - body_names):
                problems.append("%s: request body field %s not documented" % (where, name))
            success = [c for c in op["responses"] if c != "default"]
            for code in success:
                schema = (op["responses"][code].get("content", {})
                          .get("application/json", {}).get("schema"))
                for name in sorted(schema_names(schema, doc) - body_names):
                    problems.append("%s: response field %s not documented" % (where, name))
            shown = status_codes(section, "success")
            if sorted(shown) != sorted(success):
                problems.append("%s: success codes %s, openapi.json says %s"
                                % (where, shown, success))
            for name, _ in entries:
                if name in ("X-Auth-Token",):
                    break
            else:
                if path.startswith("/v1/") and path != "/v1/openapi.json":
                    problems.append("%s: X-Auth-Token not listed" % where)
    for method, path in documented:
        problems.append("%s %s: documented, but not in api-ref/openapi.json" % (method, path))

    used = set()
    for p, text in texts.items():
        for name, key in parameter_lists(text):
            used.add(key)
            if key not in params:
                problems.append("%s: %s is not in parameters.yaml"
                                % (os.path.relpath(p, ROOT), key))
    for key in sorted(set(params) - used):
        problems.append("parameters.yaml: %s is never used" % key)

    samples = set(os.listdir(os.path.join(SOURCE, "samples")))
    shown = set()
    for p, text in texts.items():
        for name in re.findall(r"^\.\. literalinclude::\s*samples/(\S+)", text, flags=re.M):
            shown.add(name)
            if name not in samples:
                problems.append("%s: samples/%s does not exist" % (os.path.relpath(p, ROOT), name))
    for name in sorted(samples - shown):
        problems.append("samples/%s is never shown" % name)

    if problems:
        print("api-ref-lint: the api-ref does not match api-ref/openapi.json:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print("api-ref-lint: %d operations, %d parameters, %d samples: all documented"
          % (sum(1 for i in doc["paths"].values() for m in i if m != "parameters"),
             len(params), len(samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
