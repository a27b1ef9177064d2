"""``openstack ekko restore create`` / ``backup restore`` / ``restore
list|show``, run through a cliff App as the openstack shell runs them (its
argparse errors and exit codes), against the real client on a fake
adapter (the bodies sent)."""

import contextlib
import io
import json
import logging
import types
import unittest

from cliff import app as cliff_app
from cliff import commandmanager

from ekkoclient.tests.test_client import FakeResponse
from ekkoclient.tests.test_client import make
from ekkoclient.v1 import restore

BACKUP = {"id": "b1", "name": "before-upgrade", "status": "available"}
LOG_NAME = "ekkoclient.tests.app"
IMAGE_ID = "5f0c3c6e-8d1e-4c55-9b51-0a7c2e6b7d10"


def image_restore(status="queued", progress=0, image_id=IMAGE_ID,
                  error=None, disk_format="raw"):
    return {"id": "r1", "backup_id": "b1", "project_id": "p1",
            "status": status, "progress": progress, "bytes_written": 0,
            "error": error,
            "target": {"type": "image", "image_id": image_id,
                       "name": "web1-restored", "disk_format": disk_format,
                       "visibility": "private", "device": "disk0"},
            "created_at": "2026-11-26T15:41:14Z", "links": []}


def file_restore(status="queued"):
    return {"id": "r0", "backup_id": "b1", "project_id": "p1",
            "status": status, "progress": 0, "bytes_written": 0,
            "format": "raw", "error": None,
            "target": {"type": "file", "path": "web1.raw",
                       "host": "stack-host", "device": "disk0"},
            "created_at": "2026-11-26T15:40:00Z", "links": []}


class App(cliff_app.App):
    """The commands under test in a cliff App, the client on a fake
    adapter; the errors it logs are asserted with assertLogs(LOG_NAME)."""

    LOG = logging.getLogger(LOG_NAME)

    def __init__(self, client):
        mgr = commandmanager.CommandManager(None)
        for name, cls in (("restore create", restore.CreateRestore),
                          ("backup restore", restore.RestoreBackup),
                          ("restore list", restore.ListRestore),
                          ("restore show", restore.ShowRestore)):
            mgr.add_command(name, cls)
        self.out = io.StringIO()
        self.err = io.StringIO()
        super().__init__("test", "0", mgr, stdout=self.out, stderr=self.err)
        self.client_manager = types.SimpleNamespace(ekko=client)

    def configure_logging(self):
        pass


class TestRestoreCreate(unittest.TestCase):

    def run_app(self, answers, *argv):
        """(exit code, the app, the client, stderr of the command)."""
        client = make(answers=answers)
        app = App(client)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = app.run(list(argv))
        return rc, app, client, err.getvalue()

    def posted(self, client):
        posts = [(url, kw["json"]) for method, url, kw in client.adapter.calls
                 if method == "POST"]
        self.assertEqual(1, len(posts))
        self.assertEqual("http://ekko:6800/v1/restores", posts[0][0])
        return posts[0][1]

    def test_image_sends_an_image_target(self):
        rc, app, client, _ = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"restore": image_restore()})],
            "restore", "create", "--image", "web1-restored", "b1",
            "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual(
            {"restore": {"backup_id": "b1",
                         "target": {"type": "image", "name": "web1-restored",
                                    "disk_format": "raw",
                                    "visibility": "private"}}},
            self.posted(client))
        shown = json.loads(app.out.getvalue())
        self.assertEqual(IMAGE_ID, shown["image_id"])
        self.assertEqual("image", shown["target"]["type"])
        self.assertEqual("queued", shown["status"])

    def test_image_qcow2_one_disk(self):
        rc, _, client, _ = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"restore": image_restore(
                 disk_format="qcow2")})],
            "restore", "create", "b1", "--image", "web1-vdb",
            "--disk-format", "qcow2", "--disk", "vdb", "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual(
            {"restore": {"backup_id": "b1", "disk": "vdb",
                         "target": {"type": "image", "name": "web1-vdb",
                                    "disk_format": "qcow2",
                                    "visibility": "private"}}},
            self.posted(client))

    def test_backup_by_name(self):
        nf = {"errors": [{"status": 404, "code": "instance-backup.not_found",
                          "title": "Not Found", "detail": "no such backup",
                          "request_id": "r", "links": []}]}
        rc, _, client, _ = self.run_app(
            [FakeResponse(404, nf),
             FakeResponse(200, {"backups": [BACKUP]}),
             FakeResponse(202, {"restore": image_restore()})],
            "restore", "create", "--image", "x", "before-upgrade",
            "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual("b1", self.posted(client)["restore"]["backup_id"])

    def test_file_target_is_unchanged(self):
        for cmd in (["backup", "restore"], ["restore", "create"]):
            rc, _, client, _ = self.run_app(
                [FakeResponse(200, {"backup": BACKUP}),
                 FakeResponse(202, {"restore": file_restore()})],
                *cmd, "b1", "--target", "web1.raw", "--host", "stack-host",
                "--disk-format", "qcow2", "--device", "disk0", "-f", "json")
            self.assertEqual(0, rc, cmd)
            self.assertEqual(
                {"restore": {"backup_id": "b1", "disk": "disk0",
                             "format": "qcow2",
                             "target": {"type": "file", "path": "web1.raw",
                                        "host": "stack-host"}}},
                self.posted(client))
        # Without --disk-format the file's format is the API's default.
        rc, _, client, _ = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"restore": file_restore()})],
            "backup", "restore", "b1", "--target", "web1.raw", "-f", "json")
        self.assertEqual(
            {"restore": {"backup_id": "b1",
                         "target": {"type": "file", "path": "web1.raw"}}},
            self.posted(client))

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

    def test_image_and_target_are_mutually_exclusive(self):
        self.assert_usage_error(
            "argument --target: not allowed with argument --image",
            "restore", "create", "b1", "--image", "x", "--target", "x.raw")
        self.assert_usage_error(
            "argument --image: not allowed with argument --target",
            "backup", "restore", "b1", "--target", "x.raw", "--image", "x")

    def test_one_of_image_or_target_is_required(self):
        self.assert_usage_error(
            "one of the arguments --image --target is required",
            "restore", "create", "b1")

    def test_disk_format_choices(self):
        self.assert_usage_error(
            "argument --disk-format: invalid choice: 'vmdk'",
            "restore", "create", "b1", "--image", "x", "--disk-format",
            "vmdk")

    def test_host_is_for_files_only(self):
        client = make()
        app = App(client)
        with self.assertLogs(LOG_NAME, "ERROR") as logs:
            rc = app.run(["restore", "create", "b1", "--image", "x",
                          "--host", "h1"])
        self.assertEqual(1, rc)
        self.assertIn("--host is for a file restore (--target)",
                      logs.output[0])
        self.assertEqual([], client.adapter.calls)

    def test_empty_image_name(self):
        app = App(make())
        with self.assertLogs(LOG_NAME, "ERROR") as logs:
            rc = app.run(["restore", "create", "b1", "--image", " "])
        self.assertEqual(1, rc)
        self.assertIn("--image needs a non-empty name", logs.output[0])

    def test_wait_until_completed(self):
        rc, app, client, err = self.run_app(
            [FakeResponse(200, {"backup": BACKUP}),
             FakeResponse(202, {"restore": image_restore(image_id=None)}),
             FakeResponse(200, {"restore": image_restore("running", 40)}),
             FakeResponse(200, {"restore": image_restore("completed", 100)})],
            "restore", "create", "--image", "web1-restored", "b1", "--wait",
            "--wait-interval", "0", "--wait-timeout", "60", "-f", "json")
        self.assertEqual(0, rc)
        self.assertEqual(["GET", "POST", "GET", "GET"],
                         [c[0] for c in client.adapter.calls])
        shown = json.loads(app.out.getvalue())
        self.assertEqual(("completed", 100, IMAGE_ID),
                         (shown["status"], shown["progress"],
                          shown["image_id"]))
        self.assertIn("restore r1 [", err)
        self.assertIn("100% completed", err)

    def test_wait_on_error_exits_non_zero_with_the_reason(self):
        failed = image_restore(
            "error", 40, error="Glance refused the image: quota exceeded")
        client = make(answers=[
            FakeResponse(200, {"backup": BACKUP}),
            FakeResponse(202, {"restore": image_restore()}),
            FakeResponse(200, {"restore": failed})])
        app = App(client)
        with contextlib.redirect_stderr(io.StringIO()), \
                self.assertLogs(LOG_NAME, "ERROR") as logs:
            rc = app.run(["restore", "create", "--image", "x", "b1",
                          "--wait", "--wait-interval", "0"])
        self.assertEqual(1, rc)
        self.assertIn(
            "Restore r1 failed: Glance refused the image: quota exceeded",
            logs.output[0])
        self.assertEqual("", app.out.getvalue())

    def test_list_shows_the_image(self):
        rc, app, _, _ = self.run_app(
            [FakeResponse(200, {"restores": [
                image_restore("completed", 100), file_restore("completed")]})],
            "restore", "list", "-f", "json")
        self.assertEqual(0, rc)
        rows = json.loads(app.out.getvalue())
        self.assertEqual(
            [("r1", "image:web1-restored", IMAGE_ID, "raw", "completed"),
             ("r0", "stack-host:web1.raw", None, "raw", "completed")],
            [(r["ID"], r["Target"], r["Image ID"], r["Format"], r["Status"])
             for r in rows])

    def test_show_has_image_id_only_for_images(self):
        rc, app, _, _ = self.run_app(
            [FakeResponse(200, {"restore": image_restore("completed")})],
            "restore", "show", "r1", "-c", "image_id", "-f", "value")
        self.assertEqual((0, IMAGE_ID), (rc, app.out.getvalue().strip()))
        rc, app, _, _ = self.run_app(
            [FakeResponse(200, {"restore": file_restore("completed")})],
            "restore", "show", "r0", "-f", "json")
        self.assertNotIn("image_id", json.loads(app.out.getvalue()))


if __name__ == "__main__":
    unittest.main()
