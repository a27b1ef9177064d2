"""``openstack ekko restore ...``, ``backup restore`` and ``export ...``,
one TestCase per command."""

from osc_lib import exceptions as osc_exc

from ekkoclient import exceptions
from ekkoclient.tests.unit import fakes
from ekkoclient.v1 import export
from ekkoclient.v1 import restore


class TestCreateRestore(fakes.TestCommand):
    cls = restore.CreateRestore

    def setUp(self):
        super().setUp()
        self.cmd = self.cls(self.app, None)
        self.client.find.return_value = fakes.backup()

    def test_file(self):
        self.client.restore_create.return_value = fakes.restore()
        parsed = self.check_parser(
            self.cmd, ["bk", "--target", "x.raw", "--disk", "disk0",
                       "--host", "h1", "--disk-format", "qcow2"],
            [("target", "x.raw"), ("device", "disk0"), ("host", "h1"),
             ("disk_format", "qcow2"), ("image", None)])
        cols, data = self.cmd.take_action(parsed)
        self.client.restore_create.assert_called_once_with(
            "b1", "x.raw", disk="disk0", host="h1", fmt="qcow2", source=None)
        self.assertEqual("r1", data[cols.index("id")])

    def test_from_the_second_copy(self):
        self.client.restore_create.return_value = fakes.restore()
        parsed = self.check_parser(
            self.cmd, ["bk", "--target", "x.raw", "--source", "replica"],
            [("source", "replica")])
        self.cmd.take_action(parsed)
        self.client.restore_create.assert_called_once_with(
            "b1", "x.raw", disk=None, host=None, fmt=None, source="replica")
        self.assertParseFails(
            self.cmd, ["bk", "--target", "x.raw", "--source", "elsewhere"])

    def test_image(self):
        self.client.restore_create_image.return_value = fakes.restore(
            target={"type": "image", "image_id": "img1", "name": "n"})
        parsed = self.check_parser(self.cmd, ["bk", "--image", "n"],
                                   [("image", "n")])
        cols, data = self.cmd.take_action(parsed)
        self.client.restore_create_image.assert_called_once_with(
            "b1", "n", disk=None, disk_format="raw", source=None)
        self.assertEqual("img1", data[cols.index("image_id")])

    def test_one_destination(self):
        self.assertParseFails(self.cmd, ["bk"])
        self.assertParseFails(self.cmd, ["bk", "--image", "n", "--target",
                                         "x"])
        parsed = self.check_parser(self.cmd, ["bk", "--image", "n",
                                              "--host", "h"], [])
        self.assertRaises(osc_exc.CommandError, self.cmd.take_action, parsed)


class TestRestoreBackup(TestCreateRestore):
    cls = restore.RestoreBackup


class TestListRestore(fakes.TestCommand):

    def test_list(self):
        cmd = restore.ListRestore(self.app, None)
        self.client.restore_list.return_value = [
            fakes.restore(), fakes.restore(id="r2", backup_id="b2")]
        parsed = self.check_parser(cmd, ["--backup", "b1"],
                                   [("backup", "b1")])
        heads, rows = cmd.take_action(parsed)
        self.client.restore_list.assert_called_once_with(
            all_projects=None, project_id=None)
        self.assertEqual(["ID", "Backup ID", "Status", "Progress",
                          "Bytes Written", "Format", "Target", "Image ID",
                          "Created At"], heads)
        self.assertEqual(1, len(rows))
        self.assertEqual("h1:x.raw", rows[0][6].machine_readable())


class TestShowRestore(fakes.TestCommand):

    def test_show(self):
        cmd = restore.ShowRestore(self.app, None)
        self.client.restore_get.return_value = fakes.restore()
        parsed = self.check_parser(cmd, ["r1"], [("restore", "r1")])
        cols, data = cmd.take_action(parsed)
        self.client.restore_get.assert_called_once_with("r1")
        self.assertEqual("queued", data[cols.index("status")])


class TestCancelRestore(fakes.TestCommand):

    def test_cancel(self):
        cmd = restore.CancelRestore(self.app, None)
        self.client.restore_cancel.return_value = fakes.restore(
            status="error")
        parsed = self.check_parser(cmd, ["r1"], [("restore", "r1")])
        cols, data = cmd.take_action(parsed)
        self.client.restore_cancel.assert_called_once_with("r1")
        self.assertEqual("error", data[cols.index("status")])


class TestCreateExport(fakes.TestCommand):

    def test_create(self):
        cmd = export.CreateExport(self.app, None)
        self.client.find.return_value = fakes.backup()
        self.client.export_create.return_value = fakes.export()
        parsed = self.check_parser(
            cmd, ["bk", "--disk", "disk0", "--lifetime", "600"],
            [("disk", "disk0"), ("lifetime", 600), ("wait", False)])
        cols, data = cmd.take_action(parsed)
        self.client.export_create.assert_called_once_with(
            "b1", disk="disk0", host=None, lifetime=600, source=None)
        self.assertEqual("starting", data[cols.index("status")])
        parsed = self.check_parser(cmd, ["bk", "--lifetime", "0"], [])
        self.assertRaises(osc_exc.CommandError, cmd.take_action, parsed)
        self.client.export_create.reset_mock()
        parsed = self.check_parser(cmd, ["bk", "--source", "replica"],
                                   [("source", "replica")])
        cmd.take_action(parsed)
        self.client.export_create.assert_called_once_with(
            "b1", disk=None, host=None, lifetime=None, source="replica")


class TestListExport(fakes.TestCommand):

    def test_list(self):
        cmd = export.ListExport(self.app, None)
        self.client.find.side_effect = exceptions.NotFound(404)
        self.client.export_list.return_value = [fakes.export()]
        parsed = self.check_parser(cmd, ["--backup", "gone",
                                         "--all-projects"], [])
        heads, rows = cmd.take_action(parsed)
        self.client.export_list.assert_called_once_with(
            backup_id="gone", all_projects=True, project_id=None)
        self.assertEqual("Project ID", heads[2])
        self.assertEqual(("x1", "b1", "p1", "disk0", "h1", "starting", None,
                          "t"), rows[0])


class TestShowExport(fakes.TestCommand):

    def test_show(self):
        cmd = export.ShowExport(self.app, None)
        self.client.export_get.return_value = fakes.export()
        parsed = self.check_parser(cmd, ["x1"], [("export", "x1")])
        cols, data = cmd.take_action(parsed)
        self.client.export_get.assert_called_once_with("x1")
        self.assertIsNone(data[cols.index("url")])


class TestDeleteExport(fakes.TestCommand):

    def test_delete(self):
        cmd = export.DeleteExport(self.app, None)
        parsed = self.check_parser(cmd, ["x1", "x2"],
                                   [("exports", ["x1", "x2"])])
        self.assertIsNone(cmd.take_action(parsed))
        self.assertEqual(2, self.client.export_delete.call_count)
        self.assertParseFails(cmd, [])
