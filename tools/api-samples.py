#!/usr/bin/env python3
"""tools/api-samples.py - capture the api-ref samples from a running Ekko.

Drives a running ekko-api (the whole of it: `ekko all-in-one` from
tools/lib/stack.sh, behind the real Keystone) through every operation of
api-ref/openapi.json, checks each answer has the status code the document
gives, and keeps the request and response bodies the api-ref shows.
Volatile values (ids, timestamps, the host and port in links, the port in
an export's NBD url, the request id) become stable placeholders, so a rerun
writes the same bytes.

    tools/api-samples.py --url URL --pause-pid PID --update   # write samples
    tools/api-samples.py --url URL --pause-pid PID --check    # compare

`--pause-pid` is the qemu-storage-daemon playing the instance: it is
stopped (SIGSTOP) for a moment so that one backup stays running long enough
to be cancelled. Credentials come from the environment of
/var/lib/ekko-openstack/env.sh (EKKO_KEYSTONE_AUTH_URL, EKKO_DEMO_* for the
project member, OS_* for the admin). Python 3 standard library only.
"""

import argparse
import difflib
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "api-ref", "source", "samples")
OPENAPI = os.path.join(ROOT, "api-ref", "openapi.json")

# What links in samples point at: the default bind port of ekko-api.
PUBLIC_BASE = "http://ekko.example.com:6800"
# Timestamps, by field name (the order a backup goes through them).
TIMESTAMPS = {
    "created_at": "2026-11-26T10:00:00Z",
    "started_at": "2026-11-26T10:00:01Z",
    "completed_at": "2026-11-26T10:00:05Z",
    "updated_at": "2026-11-26T10:00:05Z",
    # 02:00 in Europe/Paris (the sample policy's schedule and zone), winter.
    "next_run_at": "2026-11-27T01:00:00Z",
    # created_at plus the sample export's lifetime (EXPORT_LIFETIME).
    "expires_at": "2026-11-26T11:00:00Z",
}
# The lifetime the sample export asks for, in seconds.
EXPORT_LIFETIME = 3600
# The port in an export's url (nbd://ADDRESS:PORT/NAME; the host takes any
# free port): NBD's registered port. NAME is a random secret per export.
EXPORT_PORT = 10809
EXPORT_URL_RE = re.compile(r"^(nbd://(?:\[[^\]]*\]|[^/:]+)):\d+/[0-9a-f]+$")
EXPORT_NAME = "4f6b0c2e9d8a7b1c3e5f7a9b0d2c4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d"
# A backup's stored (compressed) size.
STORED_BYTES = 24576
NAMESPACE = uuid.UUID("6f1c7d2e-0b9a-4e5f-8c3d-2a1b0e9f8d7c")
# UUIDs and Keystone's 32-hex ids.
ID_RE = re.compile(r"(?<![0-9a-f])(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                   r"|[0-9a-f]{32})(?![0-9a-f])")
TIMEOUT = 120


class Failure(Exception):
    pass


def placeholder(label, hex32=False):
    """A realistic, stable id for `label`."""
    u = uuid.uuid5(NAMESPACE, label)
    return u.hex if hex32 else str(u)


class Normalizer:
    """Real volatile values -> stable placeholders."""

    def __init__(self, base):
        self.base = base.rstrip("/")
        self.ids = {}  # real -> placeholder
        self.unknown = 0

    def name(self, real, label, hex32=False):
        if real and real not in self.ids:
            self.ids[real] = placeholder(label, hex32)

    def text(self, s):
        s = s.replace(self.base, PUBLIC_BASE)
        fakes = set(self.ids.values())

        def swap(m):
            real = m.group(0)
            if real in fakes:
                return real
            if real not in self.ids:
                # An id nobody named: still stable (the capture runs in one
                # order), but say so: a sample should name what it shows.
                self.unknown += 1
                label = "unnamed-%d" % self.unknown
                self.ids[real] = placeholder(label, len(real) == 32)
                fakes.add(self.ids[real])
                print("api-samples: warning: unnamed id %s -> %s" % (real, label),
                      file=sys.stderr)
            return self.ids[real]

        return ID_RE.sub(swap, s)

    def value(self, v, key=None):
        if isinstance(v, dict):
            v = {k: self.value(x, k) for k, x in v.items()}
            if v.get("stored_bytes"):
                # What zstd makes of the disk pattern depends on its
                # version, not on the API: a stable size, and the ratio
                # that goes with it (as the API computes it).
                v["stored_bytes"] = STORED_BYTES
                if v.get("new_bytes"):
                    v["compression_ratio"] = round(v["new_bytes"] / STORED_BYTES, 2)
            return v
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, str):
            if key in TIMESTAMPS:
                return TIMESTAMPS[key]
            if key == "request_id":
                return "req-" + placeholder("request")
            if key == "url":
                return EXPORT_URL_RE.sub(r"\g<1>:%d/%s" % (EXPORT_PORT, EXPORT_NAME), v)
            return self.text(v)
        return v


class Api:
    def __init__(self, url, doc):
        self.url = url.rstrip("/")
        self.doc = doc
        self.done = set()  # (METHOD, path template) exercised

    def operation(self, method, path):
        """The documented (method, template) for a concrete path."""
        bare = path.split("?")[0]
        for template, ops in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, bare) and method.lower() in ops:
                return template, ops[method.lower()]
        raise Failure("%s %s is not in api-ref/openapi.json" % (method, bare))

    def call(self, method, path, token=None, body=None, expect=None, headers=None):
        """One request; returns (status, parsed body or None)."""
        template, op = self.operation(method, path)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("X-Auth-Token", token)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
                hdrs = resp.headers
        except urllib.error.HTTPError as e:
            status, raw, hdrs = e.code, e.read(), e.headers
        parsed = json.loads(raw) if raw else None
        documented = [c for c in op["responses"] if c != "default"]
        if expect is None:
            if status >= 400 or str(status) not in documented:
                raise Failure("%s %s answered %d (documented: %s): %s"
                              % (method, path, status, ", ".join(documented), raw[:500]))
            self.done.add((method, template))
        elif status != expect:
            raise Failure("%s %s answered %d, expected %d: %s"
                          % (method, path, status, expect, raw[:500]))
        if not hdrs.get("x-openstack-request-id", "").startswith("req-"):
            raise Failure("%s %s: no x-openstack-request-id" % (method, path))
        if not hdrs.get("OpenStack-API-Version", "").startswith("instance-backup "):
            raise Failure("%s %s: no OpenStack-API-Version" % (method, path))
        return status, parsed


def keystone_token(auth_url, user, password, project):
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    req = urllib.request.Request(
        auth_url.rstrip("/") + "/auth/tokens?nocatalog", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        token = resp.headers["X-Subject-Token"]
        info = json.loads(resp.read())["token"]
    return token, info["user"]["id"], info["project"]["id"]


def wait_for(api, path, token, key, statuses):
    deadline = time.monotonic() + TIMEOUT
    while True:
        _, body = api.call("GET", path, token)
        if body[key]["status"] in statuses:
            return body
        if body[key]["status"] == "error":
            raise Failure("%s failed: %s (the samples need a fresh stack)"
                          % (path, body[key].get("error")))
        if time.monotonic() > deadline:
            raise Failure("%s: still %s after %ds" % (path, body[key]["status"], TIMEOUT))
        time.sleep(0.2)


def next_second():
    """Sleep into the next wall-clock second, so that creation times (whole
    seconds) differ and lists sorted by them keep one order."""
    time.sleep(1.05 - (time.time() % 1.0))


def capture(args):
    """Run the scenario; returns {file name: JSON value (normalized)}."""
    env = os.environ
    need = ["EKKO_KEYSTONE_AUTH_URL", "EKKO_DEMO_USERNAME", "EKKO_DEMO_PASSWORD",
            "EKKO_DEMO_PROJECT", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME"]
    missing = [k for k in need if not env.get(k)]
    if missing:
        raise Failure("missing in the environment: " + ", ".join(missing)
                      + " (source /var/lib/ekko-openstack/env.sh)")
    with open(OPENAPI) as f:
        doc = json.load(f)
    api = Api(args.url, doc)
    norm = Normalizer(args.url)
    member, member_user, project = keystone_token(
        env["EKKO_KEYSTONE_AUTH_URL"], env["EKKO_DEMO_USERNAME"],
        env["EKKO_DEMO_PASSWORD"], env["EKKO_DEMO_PROJECT"])
    admin, admin_user, admin_project = keystone_token(
        env["EKKO_KEYSTONE_AUTH_URL"], env["OS_USERNAME"], env["OS_PASSWORD"],
        env["OS_PROJECT_NAME"])
    norm.name(project, "project", hex32=True)
    norm.name(member_user, "user", hex32=True)
    norm.name(admin_user, "admin-user", hex32=True)
    norm.name(admin_project, "admin-project", hex32=True)
    instance = args.instance
    norm.name(instance, "instance")
    out = {}

    def keep(name, value):
        if name in out:
            raise Failure("sample %s captured twice" % name)
        out[name] = norm.value(value)

    # Versions (no token).
    _, body = api.call("GET", "/")
    keep("versions-list-resp.json", body)
    _, body = api.call("GET", "/v1")
    keep("version-show-resp.json", body)
    _, body = api.call("GET", "/v1/openapi.json")
    if body.get("openapi") != doc["openapi"] or body.get("paths") != doc["paths"]:
        raise Failure("GET /v1/openapi.json is not api-ref/openapi.json")

    # Backups: a full one, then an incremental one.
    req = {"backup": {"instance_id": instance, "name": "before-upgrade",
                      "description": "Before the database upgrade", "mode": "full",
                      "metadata": {"ticket": "OPS-1234"}}}
    _, body = api.call("POST", "/v1/backups", member, req)
    first = body["backup"]["id"]
    norm.name(first, "backup-1")
    keep("backup-create-req.json", req)
    keep("backup-create-resp.json", body)
    wait_for(api, "/v1/backups/" + first, member, "backup", ("available",))
    _, body = api.call("GET", "/v1/backups/" + first, member)
    keep("backup-show-resp.json", body)

    next_second()
    _, body = api.call("POST", "/v1/backups", member,
                       {"backup": {"instance_id": instance, "name": "daily"}})
    second = body["backup"]["id"]
    norm.name(second, "backup-2")
    wait_for(api, "/v1/backups/" + second, member, "backup", ("available",))

    req = {"backup": {"name": "daily-kept", "description": "Kept for the audit",
                      "protected": True, "metadata": {"audit": "2026-Q4"}}}
    _, body = api.call("PUT", "/v1/backups/" + second, member, req)
    keep("backup-update-req.json", req)
    keep("backup-update-resp.json", body)

    _, body = api.call("GET", "/v1/backups?limit=2", member)
    keep("backups-list-resp.json", body)

    # Cancel: the instance's storage daemon is stopped, so the backup
    # stays running until it is cancelled.
    next_second()
    os.kill(args.pause_pid, signal.SIGSTOP)
    try:
        _, body = api.call("POST", "/v1/backups", member,
                           {"backup": {"instance_id": instance, "name": "too-early"}})
        third = body["backup"]["id"]
        norm.name(third, "backup-3")
        wait_for(api, "/v1/backups/" + third, member, "backup", ("running",))
        # The host runs one job at a time (STACK_MAX_CONCURRENT=1 in
        # tools/docs-build.sh): a restore now stays queued behind the
        # stalled backup until it is cancelled.
        _, body = api.call("POST", "/v1/restores", admin,
                           {"restore": {"backup_id": first, "target":
                                        {"type": "file", "path": "not-now.raw"}}})
        doomed = body["restore"]["id"]
        norm.name(doomed, "restore-2")
        req = {"cancel": {}}
        _, body = api.call("POST", "/v1/restores/%s/action" % doomed, admin, req)
        if body["restore"]["status"] != "error":
            raise Failure("restore %s not cancelled: %s" % (doomed, body))
        keep("restore-action-cancel-req.json", req)
        keep("restore-action-cancel-resp.json", body)
        _, body = api.call("POST", "/v1/backups/%s/action" % third, member, req)
        keep("backup-action-cancel-req.json", req)
        keep("backup-action-cancel-resp.json", body)
    finally:
        os.kill(args.pause_pid, signal.SIGCONT)

    # Restores (admin only by default: ekko:restore:create).
    next_second()
    req = {"restore": {"backup_id": first, "disk": "disk0", "format": "qcow2",
                       "target": {"type": "file", "path": "before-upgrade.qcow2"}}}
    _, body = api.call("POST", "/v1/restores", admin, req)
    restore = body["restore"]["id"]
    norm.name(restore, "restore-1")
    keep("restore-create-req.json", req)
    keep("restore-create-resp.json", body)
    wait_for(api, "/v1/restores/" + restore, member, "restore", ("completed",))
    _, body = api.call("GET", "/v1/restores/" + restore, member)
    keep("restore-show-resp.json", body)
    _, body = api.call("GET", "/v1/restores", member)
    keep("restores-list-resp.json", body)

    # A member restores into a new Glance image (ekko:restore:create_image).
    next_second()
    req = {"restore": {"backup_id": first, "target": {
        "type": "image", "name": "web-1 before upgrade", "disk_format": "qcow2",
        "visibility": "private"}}}
    _, body = api.call("POST", "/v1/restores", member, req)
    restore = body["restore"]["id"]
    image = body["restore"]["target"]["image_id"]
    norm.name(restore, "restore-3")
    norm.name(image, "image-1")
    keep("restore-create-image-req.json", req)
    keep("restore-create-image-resp.json", body)
    try:
        wait_for(api, "/v1/restores/" + restore, member, "restore", ("completed",))
    finally:
        glance = os.environ.get("EKKO_GLANCE_URL", "").rstrip("/")
        if glance:
            gone = urllib.request.Request("%s/v2/images/%s" % (glance, image), method="DELETE")
            gone.add_header("X-Auth-Token", member)
            try:
                urllib.request.urlopen(gone, timeout=30).close()
            except urllib.error.URLError as e:
                print("api-samples: image %s not deleted: %s" % (image, e), file=sys.stderr)

    # Exports (admin only by default: ekko:export:*): the instance's host
    # serves the backup's disk over NBD until the export is deleted.
    req = {"export": {"disk": "disk0", "lifetime": EXPORT_LIFETIME}}
    _, body = api.call("POST", "/v1/backups/%s/exports" % first, admin, req)
    export = body["export"]["id"]
    norm.name(export, "export-1")
    keep("export-create-req.json", req)
    keep("export-create-resp.json", body)
    wait_for(api, "/v1/exports/" + export, admin, "export", ("active",))
    _, body = api.call("GET", "/v1/exports/" + export, admin)
    if not EXPORT_URL_RE.match(body["export"]["url"] or ""):
        raise Failure("export %s is active without its url: %s" % (export, body))
    keep("export-show-resp.json", body)
    # The admin's token is of another project than the backup's.
    _, body = api.call("GET", "/v1/exports?all_projects=true", admin)
    keep("exports-list-resp.json", body)
    api.call("DELETE", "/v1/exports/" + export, admin)
    wait_for(api, "/v1/exports/" + export, admin, "export", ("ended",))

    # Instances.
    _, body = api.call("GET", "/v1/instances", member)
    keep("instances-list-resp.json", body)
    _, body = api.call("GET", "/v1/instances/" + instance, member)
    keep("instance-show-resp.json", body)

    # Policies.
    req = {"policy": {"name": "nightly", "description": "Every night at 02:00, Paris time",
                      "schedule": "0 2 * * *", "timezone": "Europe/Paris", "enabled": True,
                      "retention": {"keep_last": 1, "keep_daily": 7, "keep_weekly": 4,
                                    "min_age_seconds": 0}}}
    _, body = api.call("POST", "/v1/policies", member, req)
    policy = body["policy"]["id"]
    norm.name(policy, "policy-1")
    keep("policy-create-req.json", req)
    keep("policy-create-resp.json", body)
    # The scheduler fills in next_run_at shortly after.
    deadline = time.monotonic() + TIMEOUT
    while True:
        _, body = api.call("GET", "/v1/policies/" + policy, member)
        if body["policy"]["next_run_at"]:
            break
        if time.monotonic() > deadline:
            raise Failure("policy %s: next_run_at never set" % policy)
        time.sleep(0.2)
    req = {"instance_id": instance}
    api.call("POST", "/v1/policies/%s/instances" % policy, member, req)
    keep("policy-instance-add-req.json", req)
    _, body = api.call("GET", "/v1/policies/" + policy, member)
    keep("policy-show-resp.json", body)
    _, body = api.call("GET", "/v1/policies", member)
    keep("policies-list-resp.json", body)
    _, body = api.call("GET", "/v1/policies/%s/retention" % policy, member)
    keep("policy-retention-resp.json", body)
    req = {"policy": {"description": "Every night at 02:00, Paris time; two weeks of dailies",
                      "retention": {"keep_daily": 14}}}
    _, body = api.call("PUT", "/v1/policies/" + policy, member, req)
    keep("policy-update-req.json", req)
    keep("policy-update-resp.json", body)
    api.call("DELETE", "/v1/policies/%s/instances/%s" % (policy, instance), member)
    api.call("DELETE", "/v1/policies/" + policy, member)

    # Quotas.
    _, body = api.call("GET", "/v1/quotas/" + project, member)
    keep("quota-show-resp.json", body)
    req = {"quota": {"backups": 100, "backup_gigabytes": 500}}
    _, body = api.call("PUT", "/v1/quotas/" + project, admin, req)
    keep("quota-update-req.json", req)
    keep("quota-update-resp.json", body)

    # Errors.
    missing_id = str(uuid.uuid4())
    norm.name(missing_id, "missing")
    _, body = api.call("GET", "/v1/backups/" + missing_id, member, expect=404)
    keep("error-not-found-resp.json", body)
    _, body = api.call("GET", "/v1/backups", member, expect=406,
                       headers={"OpenStack-API-Version": "instance-backup 2.0"})
    keep("error-version-not-supported-resp.json", body)

    # Delete last (the backup the restore came from).
    api.call("DELETE", "/v1/backups/" + first, member)

    every = {(m.upper(), p) for p, ops in doc["paths"].items()
             for m in ops if m != "parameters"}
    left = sorted(every - api.done)
    if left:
        raise Failure("operations not exercised: "
                      + ", ".join("%s %s" % op for op in left))
    return out


def dump(value):
    return json.dumps(value, indent=4, ensure_ascii=False) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--update", action="store_true", help="write api-ref/source/samples")
    mode.add_argument("--check", action="store_true",
                      help="fail if the captured samples differ from the committed ones")
    p.add_argument("--url", default=os.environ.get("STACK_URL"),
                   help="the Ekko API (default: $STACK_URL)")
    p.add_argument("--instance", default=os.environ.get(
        "STACK_INSTANCE", "11111111-2222-4333-8444-555555555555"))
    p.add_argument("--pause-pid", type=int, default=int(os.environ.get("STACK_QSD_PID") or 0),
                   help="the instance's qemu-storage-daemon (default: $STACK_QSD_PID)")
    p.add_argument("--samples", default=SAMPLES)
    args = p.parse_args()
    if not args.url or not args.pause_pid:
        p.error("--url and --pause-pid are needed (or STACK_URL and STACK_QSD_PID)")
    try:
        captured = capture(args)
    except (Failure, urllib.error.URLError) as e:
        print("api-samples: %s" % e, file=sys.stderr)
        return 1
    os.makedirs(args.samples, exist_ok=True)
    present = {f for f in os.listdir(args.samples) if f.endswith(".json")}
    if args.update:
        for name, value in captured.items():
            with open(os.path.join(args.samples, name), "w") as f:
                f.write(dump(value))
        for name in sorted(present - set(captured)):
            os.remove(os.path.join(args.samples, name))
            print("api-samples: removed stale %s" % name)
        print("api-samples: wrote %d samples to %s" % (len(captured), args.samples))
        return 0
    bad = []
    for name, value in sorted(captured.items()):
        path = os.path.join(args.samples, name)
        new = dump(value)
        old = open(path).read() if os.path.exists(path) else ""
        if new != old:
            bad.append(name)
            sys.stderr.writelines(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True),
                "committed/" + name, "captured/" + name))
    stale = sorted(present - set(captured))
    for name in stale:
        bad.append(name + " (no longer captured)")
    if bad:
        print("api-samples: these samples differ from the running API "
              "(rerun with --update):\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    print("api-samples: %d samples match the running API" % len(captured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
