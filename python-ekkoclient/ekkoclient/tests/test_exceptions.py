import json
import unittest

from ekkoclient import exceptions as exc


def api_sig(status, code, detail, request_id="req-1"):
    return json.dumps({"errors": [{
        "request_id": request_id, "code": "instance-backup." + code,
        "status": status, "title": "T%d" % status, "detail": detail,
        "links": [{"rel": "help", "href": "https://example/errors"}]}]})


class TestFromResponse(unittest.TestCase):

    def test_api_sig_not_found(self):
        e = exc.from_response(404, api_sig(404, "not_found", "backup x"),
                              {"X-OpenStack-Request-Id": "req-hdr"})
        self.assertIsInstance(e, exc.NotFound)
        self.assertEqual(404, e.status)
        self.assertEqual("instance-backup.not_found", e.code)
        self.assertEqual("not_found", e.short_code)
        self.assertEqual("req-1", e.request_id)
        self.assertEqual(
            "T404 (HTTP 404, instance-backup.not_found): backup x "
            "(request req-1)", str(e))

    def test_quota_exceeded_is_forbidden(self):
        e = exc.from_response(403, api_sig(403, "quota_exceeded", "full"))
        self.assertIsInstance(e, exc.QuotaExceeded)
        self.assertIsInstance(e, exc.Forbidden)
        e = exc.from_response(403, api_sig(403, "forbidden", "policy"))
        self.assertNotIsInstance(e, exc.QuotaExceeded)

    def test_status_classes(self):
        for status, cls in ((400, exc.BadRequest), (401, exc.Unauthorized),
                            (406, exc.NotAcceptable), (409, exc.Conflict),
                            (503, exc.ServiceUnavailable),
                            (500, exc.InternalServerError)):
            e = exc.from_response(status, b"{}")
            self.assertIsInstance(e, cls)
            self.assertIsInstance(e, exc.ApiError)
        e = exc.from_response(418, b"")
        self.assertIs(type(e), exc.ApiError)
        self.assertEqual("Error (HTTP 418)", str(e))

    def test_unauthorized_hints(self):
        e = exc.from_response(401, api_sig(401, "unauthorized", "bad token"))
        self.assertIn("check your credentials", str(e))

    def test_not_json_keeps_a_short_text(self):
        e = exc.from_response(502, b"<html>Bad Gateway</html>",
                              {"x-openstack-request-id": "req-p"})
        self.assertEqual(
            "Bad Gateway (HTTP 502): <html>Bad Gateway</html> "
            "(request req-p)", str(e))
        e = exc.from_response(500, "x" * 500)
        self.assertTrue(e.detail.endswith("...") and len(e.detail) == 203)

    def test_other_shapes(self):
        e = exc.from_response(404, json.dumps(
            {"itemNotFound": {"code": 404, "message": "gone"}}))
        self.assertEqual(("itemNotFound", "gone"), (e.title, e.detail))
        e = exc.from_response(401, json.dumps(
            {"error": {"code": 401, "title": "Unauthorized",
                       "message": "The request you have made requires "
                                  "authentication."}}))
        self.assertIn("requires authentication", str(e))

    def test_extra_fields_and_more_errors(self):
        body = json.loads(api_sig(406, "version_not_supported", "1.9"))
        body["errors"][0]["max_version"] = "1.0"
        body["errors"].append(dict(body["errors"][0]))
        e = exc.from_response(406, body)
        self.assertEqual({"max_version": "1.0", "more_errors": 1}, e.extra)


if __name__ == "__main__":
    unittest.main()
