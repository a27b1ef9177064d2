import argparse
import io
import json
import unittest

from ekkoclient import common
from ekkoclient import exceptions as exc
from ekkoclient.osc import plugin
from ekkoclient.v1 import client as v1


class FakeResponse(object):
    def __init__(self, status, body=None, headers=None):
        self.status_code = status
        self.content = json.dumps(body).encode() if body is not None else b""
        self.headers = headers or {}

    def json(self):
        return json.loads(self.content)


class FakeAdapter(object):
    interface = "public"
    region_name = "RegionOne"

    def __init__(self, endpoint, answers):
        self.endpoint = endpoint
        self.answers = list(answers)
        self.calls = []

    def get_endpoint(self):
        return self.endpoint

    def request(self, url, method, **kw):
        self.calls.append((method, url, kw))
        return self.answers.pop(0)


def make(endpoint="http://ekko:6800/v1/", answers=()):
    """A client on a fake adapter, as if discovery had found ``endpoint``
    and negotiated microversion 1.0."""
    c = v1.Client.__new__(v1.Client)
    c.service_type = "instance-backup"
    c.api_version = None
    c._base = v1.root_of(endpoint)
    c._api_url = c._base + "/v1"
    c._microversion = "1.0"
    c.adapter = FakeAdapter(endpoint, answers)
    return c


class TestClient(unittest.TestCase):

    def test_root_of_and_url(self):
        self.assertEqual("http://e:1", v1.root_of("http://e:1/v1/"))
        self.assertEqual("http://e:1/ekko", v1.root_of("http://e:1/ekko"))
        self.assertEqual("http://ekko:6800/v1/backups",
                         make().url("/backups"))

    def test_headers_params_and_json(self):
        c = make(answers=[FakeResponse(200, {"instances": []})])
        self.assertEqual([], c.instance_list(all_projects=True))
        method, url, kw = c.adapter.calls[0]
        self.assertEqual(("GET", "http://ekko:6800/v1/instances"),
                         (method, url))
        self.assertEqual({"all_projects": "true"}, kw["params"])
        # keystoneauth sends OpenStack-API-Version from the microversion.
        self.assertEqual("1.0", kw["microversion"])
        self.assertNotIn("OpenStack-API-Version", kw["headers"])
        self.assertFalse(kw["raise_exc"])

    def test_pagination_follows_next_markers(self):
        link = {"rel": "next",
                "href": "http://elsewhere/v1/backups?limit=1&marker=b1"}
        c = make(answers=[
            FakeResponse(200, {"backups": [{"id": "b1"}],
                               "backups_links": [link]}),
            FakeResponse(200, {"backups": [{"id": "b2"}]}),
        ])
        self.assertEqual(["b1", "b2"],
                         [b["id"] for b in c.backup_list(status="available")])
        self.assertEqual({"status": "available", "marker": "b1"},
                         c.adapter.calls[1][2]["params"])

    def test_limit_is_one_page(self):
        link = {"rel": "next", "href": "/v1/backups?marker=b1"}
        c = make(answers=[FakeResponse(200, {"backups": [{"id": "b1"}],
                                             "backups_links": [link]})])
        self.assertEqual(1, len(c.backup_list(limit=1)))
        self.assertEqual(1, len(c.adapter.calls))

    def test_next_marker(self):
        self.assertIsNone(v1.next_marker(None))
        self.assertIsNone(v1.next_marker([{"rel": "self", "href": "x"}]))
        self.assertEqual("m", v1.next_marker(
            [{"rel": "next", "href": "http://h/v1/backups?sort=x&marker=m"}]))

    def test_errors_are_mapped(self):
        body = {"errors": [{"request_id": "req-9",
                            "code": "instance-backup.conflict",
                            "status": 409, "title": "Conflict",
                            "detail": "the backup is protected",
                            "links": []}]}
        c = make(answers=[FakeResponse(409, body)])
        with self.assertRaises(exc.Conflict) as cm:
            c.backup_delete("b1")
        self.assertIn("the backup is protected", str(cm.exception))
        self.assertEqual("DELETE", cm.exception.method)

    def test_find_falls_back_to_a_unique_name(self):
        nf = {"errors": [{"request_id": "r", "code": "instance-backup."
                          "not_found", "status": 404, "title": "Not Found",
                          "detail": "policy p could not be found",
                          "links": []}]}
        c = make(answers=[
            FakeResponse(404, nf),
            FakeResponse(200, {"policies": [{"id": "1", "name": "p"},
                                            {"id": "2", "name": "q"}]}),
        ])
        self.assertEqual("1", c.find("policy", "p")["id"])
        c = make(answers=[FakeResponse(404, nf),
                          FakeResponse(200, {"backups": []})])
        with self.assertRaises(exc.NotFound):
            c.find("backup", "nope")
        c = make(answers=[FakeResponse(404, nf), FakeResponse(
            200, {"backups": [{"id": "1"}, {"id": "2"}]})])
        with self.assertRaises(exc.EkkoError) as cm:
            c.find("backup", "twice")
        self.assertIn("More than one backup", str(cm.exception))

    def test_no_endpoint(self):
        from keystoneauth1 import noauth
        from keystoneauth1 import session
        c = v1.Client(session.Session(auth=noauth.NoAuth()))
        with self.assertRaises(exc.EndpointNotFound) as cm:
            c.instance_list()
        self.assertIn("instance-backup", str(cm.exception))
        self.assertIn("--os-ekko-endpoint", str(cm.exception))


class FakeClientManager(object):
    session = object()
    interface = "internal"
    region_name = "RegionOne"

    def __init__(self, config):
        self._api_version = {"ekko": "1"}
        self.config = config

    def get_configuration(self):
        return dict(self.config)


class TestPlugin(unittest.TestCase):

    def test_module_contract(self):
        self.assertEqual("ekko", plugin.API_NAME)
        self.assertEqual("os_ekko_api_version", plugin.API_VERSION_OPTION)
        self.assertEqual({"1": "ekkoclient.v1.client.Client"},
                         plugin.API_VERSIONS)

    def test_unsupported_version(self):
        from osc_lib import exceptions as osc_exc
        cm = FakeClientManager({})
        cm._api_version = {"ekko": "2"}
        with self.assertRaises(osc_exc.UnsupportedVersion):
            plugin.make_client(cm)

    def test_options(self):
        parser = plugin.build_option_parser(argparse.ArgumentParser())
        ns = parser.parse_args(["--os-ekko-endpoint", "http://x:1",
                                "--os-ekko-api-version", "1"])
        self.assertEqual(("http://x:1", "1"),
                         (ns.os_ekko_endpoint, ns.os_ekko_api_version))

    def test_make_client(self):
        from keystoneauth1 import session
        cm = FakeClientManager({"ekko_endpoint": "http://x:1/v1"})
        cm.session = session.Session()
        c = plugin.make_client(cm)
        self.assertEqual("instance-backup", c.adapter.service_type)
        self.assertEqual("internal", c.adapter.interface)
        self.assertEqual("RegionOne", c.adapter.region_name)
        self.assertEqual("http://x:1", c.base_url)
        cm = FakeClientManager({})
        cm.session = session.Session()
        self.assertIsNone(plugin.make_client(cm).adapter.endpoint_override)


class TestCommon(unittest.TestCase):

    def test_human(self):
        self.assertEqual("0 B", common.human(0))
        self.assertEqual("1023 B", common.human(1023))
        self.assertEqual("1.0 KiB", common.human(1024))
        self.assertEqual("64.0 MiB", common.human(64 << 20))

    def test_progress_bar(self):
        self.assertEqual("[##########..........]  50% running",
                         common.progress_bar(50, "running", 20))
        self.assertEqual("[....]   0% queued",
                         common.progress_bar(None, "queued", 4))
        self.assertEqual("[####] 100% x", common.progress_bar(150, "x", 4))

    def test_show_dict_uses_osc_lib_columns(self):
        from osc_lib.cli import format_columns
        cols, vals = common.show_dict(
            {"id": "1", "metadata": {"a": "1"}, "tags": ["x", "y"],
             "disks": [{"device": "vda"}], "nums": [1, 2], "links": []})
        self.assertEqual(("disks", "id", "metadata", "nums", "tags"), cols)
        self.assertIsInstance(vals[0], format_columns.ListDictColumn)
        self.assertEqual("1", vals[1])
        self.assertIsInstance(vals[2], format_columns.DictColumn)
        self.assertEqual("a='1'", vals[2].human_readable())
        self.assertEqual("[1, 2]", vals[3].human_readable())
        self.assertEqual("x, y", vals[4].human_readable())

    def test_wait_for_draws_and_stops(self):
        states = iter([{"status": "queued", "progress": 0},
                       {"status": "running", "progress": 40},
                       {"status": "running", "progress": 40},
                       {"status": "error", "progress": 40}])
        out = io.StringIO()
        res = common.wait_for(lambda: next(states), ("available", "error"),
                              stream=out, label="b ", sleep=lambda s: None)
        self.assertEqual("error", res["status"])
        lines = out.getvalue().splitlines()
        self.assertEqual(3, len(lines))  # unchanged lines are not repeated
        self.assertTrue(lines[1].startswith("b [############"))

    def test_wait_for_times_out(self):
        now = iter(range(100))
        with self.assertRaises(TimeoutError):
            common.wait_for(lambda: {"status": "running"}, ("available",),
                            stream=io.StringIO(), timeout=3,
                            sleep=lambda s: None, clock=lambda: next(now))


if __name__ == "__main__":
    unittest.main()
