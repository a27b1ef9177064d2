"""``openstack ekko export create|list|show|delete``, run through a cliff
App as the openstack shell runs them (its argparse errors and exit codes),
against the real client on a fake adapter (the requests sent)."""

import contextlib
import io
import json
import logging
import os
import types
import unittest

from cliff import app as cliff_app
from cliff import commandmanager

from ekkoclient.tests.test_client import FakeResponse
from ekkoclient.tests.test_client import make
from ekkoclient.v1 import export

BACKUP = {"id": "b1", "name": "before-upgrade", "status": "available"}
LOG_NAME = "ekkoclient.tests.app"
URL = "nbd://127.0.0.1:40123/x1"
NOT_FOUND = {"errors": [{"status": 404, "code": "instance-backup.not_found",
                         "title": "Not Found",
                         "detail": "export nope could not be found",
                         "request_id": "req-1", "links": []}]}


def an_export(status="starting", export_id="x1", backup_id="b1", url=None,
              error=None, disk="vda", host="compute-1", lifetime=3600):
    if url is None and status == "active":
        url = "nbd://127.0.0.1:40123/%s" % export_id
    return {"id": export_id, "backup_id": backup_id, "project_id": "p1",
            "user_id": "u1", "disk": disk, "host": host, "status": status,
            "url": url, "tls": False, "lifetime": lifetime,
            "expires_at": "2026-11-26T16:41:14Z",
            "created_at": "2026-11-26T15:41:14Z",
            "updated_at": "2026-11-26T15:41:15Z", "error": error,
            "links": [{"rel": "self",
                       "href": "http://ekko:6800/v1/exports/%s" % export_id}]}


class App(cliff_app.App):
    """The export commands in a cliff App, the client on a fake adapter;
    the errors it logs are asserted with assertLogs."""

    LOG = logging.getLogger(LOG_NAME)

    def __init__(self, client):
        mgr = commandmanager.CommandManager(None)
        for name, cls in (("export create", export.CreateExport),
                          ("export list", export.ListExport),
                          ("export show", export.ShowExport),
                          ("export delete", export.DeleteExport)):
            mgr.add_command(name, cls)
        self.out = io.StringIO()
        self.err = io.StringIO()
        super().__init__("test", "0", mgr, stdout=self.out, stderr=self.err)
        self.client_manager = types.SimpleNamespace(ekko=client)

    def configure_logging(self):
        pass


class Base(unittest.TestCase):

    def run_app(self, answers, *argv):
        """(exit code, the app, the client, stderr of the command)."""
        client = make(answers=answers)
        app = App(client)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = app.run(list(argv))
        return rc, app, client, err.getvalue()

    def run_failing(self, answers, *argv):
        """(exit code, the app, the client, the messages logged), for a
        command that fails: its errors are logged (by the App, and per
        export by ``export delete``)."""
        client = make(answers=answers)
        app = App(client)
        with contextlib.redirect_stderr(io.StringIO()), \
                self.assertLogs(level="ERROR") as logs:
            rc = app.run(list(argv))
        return rc, app, client, logs.output

    def assert_usage_error(self, message, *argv):
        client = make()
        app = App(client)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), \
                self.assertRaises(SystemExit) as cm:
            app.run(list(argv))
        self.assertEqual(2, cm.exception.code)
        self.assertIn(message, err.getvalue())
        self.assertEqual([], client.adapter.calls)

    def requests(self, client):
        """(method, url) of every request sent."""
        return [(method, url) for method, url, _ in client.adapter.calls]


class TestExportCreate(Base):

    def posted(self, client):
        posts = [(url, kw["json"]) for method, url, kw in client.adapter.calls
                 if method == "POST"]
        self.assertEqual(1, len(posts))
        self.assertEqual("http://ekko:6800/v1/backups/b1/exports",
                         posts[0][0])
        return posts[0][1]

    def test_every_option(self):
        rc, app, client, _ = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"export": an_export(lifetime=600)},
                          {"Location": "http://ekko:6800/v1/exports/x1"})],
            "export", "create", "b1", "--disk", "vda", "--host", "compute-1",
            "--lifetime", "600", "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual(
            {"export": {"disk": "vda", "host": "compute-1",
                        "lifetime": 600}},
            self.posted(client))
        shown = json.loads(app.out.getvalue())
        self.assertEqual(
            ("x1", "b1", "starting", None, False, 600),
            (shown["id"], shown["backup_id"], shown["status"], shown["url"],
             shown["tls"], shown["lifetime"]))
        self.assertNotIn("links", shown)

    def test_defaults_are_the_apis(self):
        rc, _, client, _ = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"export": an_export()})],
            "export", "create", "b1", "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual({"export": {}}, self.posted(client))
        # --device is --disk, as for restore create.
        rc, _, client, _ = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"export": an_export()})],
            "export", "create", "b1", "--device", "vdb", "-f", "json")
        self.assertEqual({"export": {"disk": "vdb"}}, self.posted(client))

    def test_backup_by_name(self):
        nf = {"errors": [{"status": 404, "code": "instance-backup.not_found",
                          "title": "Not Found", "detail": "no such backup",
                          "request_id": "r", "links": []}]}
        rc, _, client, _ = self.run_app(
            [FakeResponse(404, nf),
             FakeResponse(200, {"backups": [BACKUP]}),
             FakeResponse(202, {"export": an_export()})],
            "export", "create", "before-upgrade", "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual(
            [("GET", "http://ekko:6800/v1/backups/before-upgrade"),
             ("GET", "http://ekko:6800/v1/backups"),
             ("POST", "http://ekko:6800/v1/backups/b1/exports")],
            self.requests(client))

    def test_lifetime_must_be_a_positive_integer(self):
        self.assert_usage_error(
            "argument --lifetime: invalid int value: 'an-hour'",
            "export", "create", "b1", "--lifetime", "an-hour")
        rc, _, client, logs = self.run_failing(
            [], "export", "create", "b1", "--lifetime", "0")
        self.assertEqual(1, rc)
        self.assertIn("--lifetime must be a positive number of seconds",
                      logs[0])
        self.assertEqual([], client.adapter.calls)

    def test_api_error_is_one_line(self):
        forbidden = {"errors": [{
            "status": 403, "code": "instance-backup.forbidden",
            "title": "Forbidden",
            "detail": "policy ekko:export:create refuses it",
            "request_id": "req-9", "links": []}]}
        rc, app, _, logs = self.run_failing(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(403, forbidden)],
            "export", "create", "b1")
        self.assertEqual(1, rc)
        self.assertIn("Forbidden (HTTP 403, instance-backup.forbidden): "
                      "policy ekko:export:create refuses it", logs[0])
        self.assertEqual("", app.out.getvalue())

    def test_wait_until_active(self):
        rc, app, client, err = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"export": an_export()}),
             FakeResponse(200, {"export": an_export()}),
             FakeResponse(200, {"export": an_export("active")})],
            "export", "create", "b1", "--wait", "--wait-interval", "0",
            "--wait-timeout", "60", "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual(
            [("GET", "http://ekko:6800/v1/backups/b1"),
             ("POST", "http://ekko:6800/v1/backups/b1/exports"),
             ("GET", "http://ekko:6800/v1/exports/x1"),
             ("GET", "http://ekko:6800/v1/exports/x1")],
            self.requests(client))
        shown = json.loads(app.out.getvalue())
        self.assertEqual(("active", URL), (shown["status"], shown["url"]))
        # The bar's progress is drawn, never shown as a field.
        self.assertNotIn("progress", shown)
        self.assertIn("export x1 [", err)
        self.assertIn("0% starting", err)
        self.assertIn("100% active", err)

    def test_wait_on_error_exits_non_zero_with_the_reason(self):
        failed = an_export("error", error="no disk vdb in backup b1")
        rc, app, _, logs = self.run_failing(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"export": an_export()}),
             FakeResponse(200, {"export": failed})],
            "export", "create", "b1", "--wait", "--wait-interval", "0")
        self.assertEqual(1, rc)
        self.assertIn("Export x1 failed: no disk vdb in backup b1", logs[0])
        self.assertEqual("", app.out.getvalue())

    def test_wait_on_ended_exits_non_zero(self):
        for status, said in (("ended", "Export x1 ended before it was "
                                       "active: host compute-1 is down"),
                             ("ending", "Export x1 is ending before it "
                                        "was active: host compute-1 is "
                                        "down")):
            rc, app, client, logs = self.run_failing(
                [FakeResponse(200, {"backup": BACKUP}),
                 FakeResponse(202, {"export": an_export()}),
                 FakeResponse(200, {"export": an_export()}),
                 FakeResponse(200, {"export": an_export(
                     status, error="host compute-1 is down")})],
                "export", "create", "b1", "--wait", "--wait-interval", "0")
            self.assertEqual(1, rc, status)
            self.assertIn(said, logs[0])
            self.assertEqual(4, len(client.adapter.calls))
        rc, _, _, logs = self.run_failing(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"export": an_export()}),
             FakeResponse(200, {"export": an_export("ended")})],
            "export", "create", "b1", "--wait", "--wait-interval", "0")
        self.assertIn("Export x1 ended before it was active: no reason",
                      logs[0])

    def test_help_of_every_argument(self):
        parser = export.CreateExport(App(make()), None).get_parser("create")
        text = parser.format_help()
        for option in ("--disk", "--host", "--lifetime", "--wait",
                       "--wait-interval", "--wait-timeout"):
            self.assertIn(option, text)
        self.assertIn("Wait until the export serves", text)
        for cls in (export.CreateExport, export.ListExport,
                    export.ShowExport, export.DeleteExport):
            parser = cls(App(make()), None).get_parser("x")
            for action in parser._actions:
                self.assertTrue(action.help, (cls.__name__, action.dest))


class TestExportList(Base):

    def test_columns(self):
        rc, app, client, _ = self.run_app(
            [FakeResponse(200, {"exports": [
                an_export("active"),
                an_export("ended", export_id="x0", backup_id="b0")]})],
            "export", "list", "-f", "json")
        self.assertEqual(0, rc)
        method, url, kw = client.adapter.calls[0]
        self.assertEqual(("GET", "http://ekko:6800/v1/exports", None),
                         (method, url, kw["params"]))
        rows = json.loads(app.out.getvalue())
        self.assertEqual(
            ["ID", "Backup ID", "Disk", "Host", "Status", "URL",
             "Expires At"], list(rows[0]))
        self.assertEqual(
            [("x1", "b1", "vda", "compute-1", "active", URL,
              "2026-11-26T16:41:14Z"),
             ("x0", "b0", "vda", "compute-1", "ended", None,
              "2026-11-26T16:41:14Z")],
            [tuple(r.values()) for r in rows])

    def test_filters_are_sent(self):
        rc, app, client, _ = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(200, {"exports": [an_export("active")]})],
            "export", "list", "--backup", "before-upgrade", "--all-projects",
            "--project", "p1", "-f", "json")
        self.assertEqual(0, rc)
        method, url, kw = client.adapter.calls[1]
        self.assertEqual(("GET", "http://ekko:6800/v1/exports"),
                         (method, url))
        self.assertEqual({"backup_id": "b1", "all_projects": "true",
                          "project_id": "p1"}, kw["params"])
        rows = json.loads(app.out.getvalue())
        self.assertEqual(("x1", "b1", "p1"),
                         (rows[0]["ID"], rows[0]["Backup ID"],
                          rows[0]["Project ID"]))

    def test_backup_that_is_gone(self):
        rc, _, client, _ = self.run_app(
            [FakeResponse(404, NOT_FOUND),
             FakeResponse(200, {"backups": []}),
             FakeResponse(200, {"exports": []})],
            "export", "list", "--backup", "b9", "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual({"backup_id": "b9"},
                         client.adapter.calls[2][2]["params"])

    def test_every_page(self):
        link = {"rel": "next",
                "href": "http://ekko:6800/v1/exports?marker=x1"}
        rc, app, client, _ = self.run_app(
            [FakeResponse(200, {"exports": [an_export("active")],
                                "exports_links": [link]}),
             FakeResponse(200, {"exports": [an_export(
                 "ended", export_id="x0")]})],
            "export", "list", "-f", "value", "-c", "ID")
        self.assertEqual(0, rc)
        self.assertEqual(["x1", "x0"], app.out.getvalue().split())
        self.assertEqual({"marker": "x1"},
                         client.adapter.calls[1][2]["params"])


class TestExportShow(Base):

    def test_show(self):
        rc, app, client, _ = self.run_app(
            [FakeResponse(200, {"export": an_export("active")})],
            "export", "show", "x1", "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual([("GET", "http://ekko:6800/v1/exports/x1")],
                         self.requests(client))
        shown = json.loads(app.out.getvalue())
        self.assertEqual(
            ["backup_id", "created_at", "disk", "error", "expires_at",
             "host", "id", "lifetime", "project_id", "status", "tls",
             "updated_at", "url", "user_id"], sorted(shown))
        self.assertEqual(("active", URL, "vda", "compute-1"),
                         (shown["status"], shown["url"], shown["disk"],
                          shown["host"]))

    def test_url_for_scripts(self):
        rc, app, _, _ = self.run_app(
            [FakeResponse(200, {"export": an_export("active")})],
            "export", "show", "x1", "-c", "url", "-f", "value")
        self.assertEqual((0, URL), (rc, app.out.getvalue().strip()))

    def test_not_found(self):
        rc, _, _, logs = self.run_failing(
            [FakeResponse(404, NOT_FOUND)], "export", "show", "nope")
        self.assertEqual(1, rc)
        self.assertIn("HTTP 404", logs[0])
        self.assertIn("export nope could not be found", logs[0])


class TestExportDelete(Base):

    def test_delete_several(self):
        rc, app, client, _ = self.run_app(
            [FakeResponse(202), FakeResponse(202)],
            "export", "delete", "x1", "x2")
        self.assertEqual(0, rc)
        self.assertEqual(
            [("DELETE", "http://ekko:6800/v1/exports/x1"),
             ("DELETE", "http://ekko:6800/v1/exports/x2")],
            self.requests(client))
        self.assertEqual("", app.out.getvalue())

    def test_partial_failure_reports_each_and_exits_non_zero(self):
        rc, _, client, logs = self.run_failing(
            [FakeResponse(202), FakeResponse(404, NOT_FOUND),
             FakeResponse(202)],
            "export", "delete", "x1", "nope", "x3")
        self.assertEqual(1, rc)
        # Every export is tried, the failure does not stop the others.
        self.assertEqual(
            [("DELETE", "http://ekko:6800/v1/exports/x1"),
             ("DELETE", "http://ekko:6800/v1/exports/nope"),
             ("DELETE", "http://ekko:6800/v1/exports/x3")],
            self.requests(client))
        self.assertEqual(2, len(logs))
        self.assertIn("Failed to delete export nope: Not Found (HTTP 404",
                      logs[0])
        self.assertIn("1 of 3 exports failed to delete.", logs[1])

    def test_needs_an_export(self):
        self.assert_usage_error("the following arguments are required",
                                "export", "delete")


class TestEntryPoints(unittest.TestCase):

    def test_export_commands_are_registered(self):
        from ekkoclient.tests import test_packaging
        if not os.path.exists(os.path.join(test_packaging.ROOT,
                                           "setup.cfg")):
            self.skipTest("installed without its setup.cfg")
        points = test_packaging.entry_points("openstack.ekko.v1")
        self.assertEqual(
            {"ekko_export_create": "ekkoclient.v1.export:CreateExport",
             "ekko_export_list": "ekkoclient.v1.export:ListExport",
             "ekko_export_show": "ekkoclient.v1.export:ShowExport",
             "ekko_export_delete": "ekkoclient.v1.export:DeleteExport"},
            {k: v for k, v in points.items() if k.startswith("ekko_export")})
        for target in points.values():
            module, _, name = target.partition(":")
            self.assertTrue(hasattr(__import__(module, fromlist=[name]),
                                    name), target)


if __name__ == "__main__":
    unittest.main()
