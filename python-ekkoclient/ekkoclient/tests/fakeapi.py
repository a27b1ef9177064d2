"""A local HTTP server answering as Ekko's API does (src/api/version.rs):
``GET /`` the versions document, ``GET /v1`` the version, ``GET /v1/...``
canned bodies; it records the path and ``OpenStack-API-Version`` of every
request. Only the standard library: keystoneauth's real session talks to
it."""

import json
import threading
from http import server


def version_object(base, lo="1.0", hi="1.0"):
    return {"id": "v1", "status": "CURRENT", "version": hi,
            "min_version": lo, "max_version": hi,
            "updated": "2026-11-26T00:00:00Z",
            "links": [{"rel": "self", "href": base + "/v1/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack."
                                     "instance-backup+json;version=1"}]}


class FakeApi(object):
    """``with FakeApi(bodies) as api:`` ... ``api.url``, ``api.seen``."""

    def __init__(self, bodies=None, lo="1.0", hi="1.0", discovery=True):
        self.bodies = dict(bodies or {})
        self.lo, self.hi, self.discovery = lo, hi, discovery
        self.seen = []
        api = self

        class Handler(server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, method):
                api.seen.append((method, self.path, self.headers.get(
                    "OpenStack-API-Version")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?")[0]
                status, body = 404, {"errors": [{
                    "status": 404, "code": "instance-backup.not_found",
                    "title": "Not Found", "detail": path,
                    "request_id": "req-1", "links": []}]}
                if api.discovery and path == "/":
                    status, body = 200, {"versions": [version_object(
                        api.url, api.lo, api.hi)]}
                elif api.discovery and path.rstrip("/") == "/v1":
                    status, body = 200, {"version": version_object(
                        api.url, api.lo, api.hi)}
                elif (method, path) in api.bodies:
                    status, body = api.bodies[(method, path)]
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer("GET")

            def do_POST(self):
                self.answer("POST")

            def do_PUT(self):
                self.answer("PUT")

            def do_DELETE(self):
                self.answer("DELETE")

        self.httpd = server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_port

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.01},
                                       daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
