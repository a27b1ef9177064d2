"""``openstack ekko backup ...``, one TestCase per command."""

import io
from unittest import mock

from osc_lib.cli import format_columns
from osc_lib import exceptions as osc_exc

from ekkoclient import common
from ekkoclient.tests.unit import fakes
from ekkoclient.v1 import backup


class TestCreateBackup(fakes.TestCommand):

    def setUp(self):
        super().setUp()
        self.cmd = backup.CreateBackup(self.app, None)
        self.client.find.return_value = fakes.instance()
        self.client.backup_create.return_value = fakes.backup(
            status="queued")

    def test_create(self):
        parsed = self.check_parser(
            self.cmd, ["web1", "--name", "n", "--full", "--property",
                       "a=1", "--property", "b=x=y"],
            [("instance", "web1"), ("name", "n"), ("full", True),
             ("properties", {"a": "1", "b": "x=y"}), ("wait", False)])
        cols, data = self.cmd.take_action(parsed)
        self.client.find.assert_called_once_with("instance", "web1")
        self.client.backup_create.assert_called_once_with(
            "i1", name="n", description=None, mode="full",
            metadata={"a": "1", "b": "x=y"})
        self.assertIn("status", cols)
        self.assertNotIn("links", cols)
        self.assertEqual("queued", data[cols.index("status")])
        self.assertIsInstance(data[cols.index("size")], common.SizeColumn)
        self.assertIsInstance(data[cols.index("metadata")],
                              format_columns.DictColumn)

    def test_bad_property(self):
        self.assertParseFails(self.cmd, ["web1", "--property", "novalue"])
        self.assertParseFails(self.cmd, ["web1", "--property", "=v"])

    def test_wait_fails_on_error(self):
        self.client.backup_get.return_value = fakes.backup(
            status="error", error="disk gone")
        parsed = self.check_parser(self.cmd, ["web1", "--wait",
                                              "--wait-interval", "0"], [])
        with mock.patch("sys.stderr", io.StringIO()):
            with self.assertRaises(osc_exc.CommandError) as cm:
                self.cmd.take_action(parsed)
        self.assertIn("disk gone", str(cm.exception))


class TestListBackup(fakes.TestCommand):

    def setUp(self):
        super().setUp()
        self.cmd = backup.ListBackup(self.app, None)
        self.client.backup_list.return_value = [fakes.backup()]

    def test_list(self):
        parsed = self.check_parser(self.cmd, [], [("long", False)])
        heads, rows = self.cmd.take_action(parsed)
        self.assertEqual(["ID", "Name", "Instance ID", "Status", "Kind",
                          "Progress", "Size", "Created At"], heads)
        self.assertEqual(("b1", "bk", "i1", "available", "full", 100),
                         rows[0][:6])
        self.assertEqual("1.0 KiB", rows[0][6].human_readable())
        self.client.backup_list.assert_called_once_with(
            limit=None, instance_id=None, status=None, name=None,
            all_projects=None, project_id=None, marker=None, sort=None)

    def test_filters_long_all_projects(self):
        self.client.find.return_value = fakes.instance()
        parsed = self.check_parser(
            self.cmd, ["--instance", "web1", "--status", "available",
                       "--all-projects", "--limit", "2", "--long",
                       "--sort", "created_at:asc"],
            [("limit", 2), ("all_projects", True)])
        heads, rows = self.cmd.take_action(parsed)
        self.assertEqual("Project ID", heads[3])
        self.assertIn("Stored", heads)
        self.client.backup_list.assert_called_once_with(
            limit=2, instance_id="i1", status="available", name=None,
            all_projects=True, project_id=None, marker=None,
            sort="created_at:asc")

    def test_bad_status(self):
        self.assertParseFails(self.cmd, ["--status", "nope"])


class TestShowBackup(fakes.TestCommand):

    def test_show(self):
        cmd = backup.ShowBackup(self.app, None)
        self.client.find.return_value = fakes.backup()
        parsed = self.check_parser(cmd, ["bk"], [("backup", "bk")])
        cols, data = cmd.take_action(parsed)
        self.client.find.assert_called_once_with("backup", "bk")
        self.assertEqual("b1", data[cols.index("id")])
        self.assertEqual(1024, data[cols.index("size")].machine_readable())

    def test_show_second_copy(self):
        cmd = backup.ShowBackup(self.app, None)
        where = {"store": "offsite", "status": "replicated",
                 "copied_at": "2026-01-01T00:05:00Z"}
        self.client.find.return_value = fakes.backup(replication=where)
        cols, data = cmd.take_action(self.check_parser(cmd, ["bk"], []))
        shown = data[cols.index("replication")]
        self.assertEqual(where, shown.machine_readable())
        self.assertIn("status='replicated'", shown.human_readable())


class TestSetBackup(fakes.TestCommand):

    def setUp(self):
        super().setUp()
        self.cmd = backup.SetBackup(self.app, None)
        self.client.find.return_value = fakes.backup()

    def test_set(self):
        parsed = self.check_parser(
            self.cmd, ["bk", "--name", "n2", "--protected", "--property",
                       "b=2"], [("protected", True)])
        self.assertIsNone(self.cmd.take_action(parsed))
        self.client.backup_update.assert_called_once_with(
            "b1", name="n2", protected=True, metadata={"a": "1", "b": "2"})

    def test_no_property_unprotected(self):
        parsed = self.check_parser(
            self.cmd, ["bk", "--no-property", "--unprotected"],
            [("protected", False), ("no_property", True)])
        self.cmd.take_action(parsed)
        self.client.backup_update.assert_called_once_with(
            "b1", protected=False, metadata={})

    def test_nothing(self):
        parsed = self.check_parser(self.cmd, ["bk"], [])
        self.assertRaises(osc_exc.CommandError, self.cmd.take_action, parsed)
        self.assertParseFails(self.cmd, ["bk", "--protected",
                                         "--unprotected"])


class TestUnsetBackup(fakes.TestCommand):

    def test_unset(self):
        cmd = backup.UnsetBackup(self.app, None)
        self.client.find.return_value = fakes.backup(
            metadata={"a": "1", "b": "2"})
        parsed = self.check_parser(cmd, ["bk", "--property", "a"],
                                   [("properties", ["a"])])
        cmd.take_action(parsed)
        self.client.backup_update.assert_called_once_with(
            "b1", metadata={"b": "2"})
        self.assertParseFails(cmd, ["bk"])


class TestDeleteBackup(fakes.TestCommand):

    def test_delete_reports_failures(self):
        from ekkoclient import exceptions
        cmd = backup.DeleteBackup(self.app, None)
        self.client.find.side_effect = [
            fakes.backup(), exceptions.NotFound(404, detail="gone")]
        parsed = self.check_parser(cmd, ["bk", "nope"],
                                   [("backups", ["bk", "nope"])])
        with self.assertLogs(backup.LOG.name, "ERROR"):
            with self.assertRaises(osc_exc.CommandError) as cm:
                cmd.take_action(parsed)
        self.assertIn("1 of 2", str(cm.exception))
        self.client.backup_delete.assert_called_once_with("b1")


class TestCancelBackup(fakes.TestCommand):

    def test_cancel(self):
        cmd = backup.CancelBackup(self.app, None)
        self.client.find.return_value = fakes.backup(status="running")
        parsed = self.check_parser(cmd, ["bk"], [("backup", "bk")])
        cmd.take_action(parsed)
        self.client.backup_cancel.assert_called_once_with("b1")
