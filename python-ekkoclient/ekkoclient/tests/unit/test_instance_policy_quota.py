"""``openstack ekko instance|policy|quota ...``, one TestCase per
command."""

from osc_lib import exceptions as osc_exc

from ekkoclient import exceptions
from ekkoclient.tests.unit import fakes
from ekkoclient.v1 import instance
from ekkoclient.v1 import policy
from ekkoclient.v1 import quota


class TestListInstance(fakes.TestCommand):

    def test_list(self):
        cmd = instance.ListInstance(self.app, None)
        self.client.instance_list.return_value = [fakes.instance()]
        parsed = self.check_parser(cmd, ["--long"], [("long", True)])
        heads, rows = cmd.take_action(parsed)
        self.client.instance_list.assert_called_once_with(all_projects=None)
        self.assertEqual("Policy ID", heads[7])
        self.assertEqual("disk0 (1.0 KiB)", rows[0][4].human_readable())
        self.assertIsNone(rows[0][6].machine_readable())


class TestShowInstance(fakes.TestCommand):

    def test_show(self):
        cmd = instance.ShowInstance(self.app, None)
        self.client.find.return_value = fakes.instance(
            last_backup={"id": "b1", "kind": "full", "created_at": "t"})
        parsed = self.check_parser(cmd, ["web1"], [("instance", "web1")])
        cols, data = cmd.take_action(parsed)
        self.client.find.assert_called_once_with("instance", "web1")
        self.assertEqual("b1 (full, t)",
                         data[cols.index("last_backup")].human_readable())


class TestInstanceTimeline(fakes.TestCommand):

    def test_timeline(self):
        cmd = instance.InstanceTimeline(self.app, None)
        self.client.find.return_value = fakes.instance()
        self.client.backup_list.return_value = [fakes.backup()]
        parsed = self.check_parser(cmd, ["web1", "--width", "10"],
                                   [("width", 10)])
        cmd.take_action(parsed)
        self.client.backup_list.assert_called_once_with(
            instance_id="i1", status="available", sort="created_at:asc")
        self.assertEqual(2, len(self.app.stdout.getvalue().splitlines()))


class TestCreatePolicy(fakes.TestCommand):

    def test_create(self):
        cmd = policy.CreatePolicy(self.app, None)
        self.client.find.return_value = fakes.instance()
        self.client.policy_create.return_value = fakes.policy()
        self.client.policy_get.return_value = fakes.policy(instances=["i1"])
        parsed = self.check_parser(
            cmd, ["nightly", "--schedule", "0 2 * * *", "--keep-daily", "7",
                  "--min-age", "60", "--disable", "--instance", "web1"],
            [("name", "nightly"), ("enable", False), ("keep_daily", 7),
             ("instances", ["web1"])])
        cols, data = cmd.take_action(parsed)
        self.client.policy_create.assert_called_once_with(
            name="nightly", schedule="0 2 * * *", enabled=False,
            retention={"keep_daily": 7, "min_age_seconds": 60})
        self.client.policy_add_instance.assert_called_once_with("pol1", "i1")
        self.assertEqual(["i1"],
                         data[cols.index("instances")].machine_readable())
        self.assertEqual("keep_last=3",
                         data[cols.index("retention")].human_readable())
        self.assertParseFails(cmd, ["n", "--schedule", "x", "--no-schedule"])


class TestListPolicy(fakes.TestCommand):

    def test_list(self):
        cmd = policy.ListPolicy(self.app, None)
        self.client.policy_list.return_value = [fakes.policy()]
        parsed = self.check_parser(cmd, [], [("long", False)])
        heads, rows = cmd.take_action(parsed)
        self.assertEqual(["ID", "Name", "Schedule", "Time Zone", "Enabled",
                          "Next Run At", "Instances"], heads)
        self.assertEqual(("pol1", "nightly"), rows[0][:2])


class TestShowPolicy(fakes.TestCommand):

    def test_show(self):
        cmd = policy.ShowPolicy(self.app, None)
        self.client.find.return_value = fakes.policy()
        parsed = self.check_parser(cmd, ["nightly"], [("policy", "nightly")])
        cols, data = cmd.take_action(parsed)
        self.client.find.assert_called_once_with("policy", "nightly")
        self.assertEqual("UTC", data[cols.index("timezone")])


class TestSetPolicy(fakes.TestCommand):

    def test_set(self):
        cmd = policy.SetPolicy(self.app, None)
        self.client.find.return_value = fakes.policy()
        parsed = self.check_parser(cmd, ["nightly", "--name", "n2",
                                         "--no-schedule", "--enable"], [])
        cmd.take_action(parsed)
        self.client.policy_update.assert_called_once_with(
            "pol1", name="n2", schedule=None, enabled=True)
        parsed = self.check_parser(cmd, ["nightly"], [])
        self.assertRaises(osc_exc.CommandError, cmd.take_action, parsed)


class TestDeletePolicy(fakes.TestCommand):

    def test_delete(self):
        cmd = policy.DeletePolicy(self.app, None)
        self.client.find.return_value = fakes.policy()
        parsed = self.check_parser(cmd, ["nightly"],
                                   [("policies", ["nightly"])])
        cmd.take_action(parsed)
        self.client.policy_delete.assert_called_once_with("pol1")


class TestAddInstanceToPolicy(fakes.TestCommand):

    def test_add(self):
        cmd = policy.AddInstanceToPolicy(self.app, None)
        self.client.find.side_effect = fakes.find_by_kind(
            {"policy": fakes.policy(), "instance": fakes.instance()})
        parsed = self.check_parser(cmd, ["nightly", "web1"],
                                   [("policy", "nightly"),
                                    ("instance", "web1")])
        cmd.take_action(parsed)
        self.client.policy_add_instance.assert_called_once_with("pol1", "i1")


class TestRemoveInstanceFromPolicy(fakes.TestCommand):

    def test_remove_a_forgotten_instance(self):
        cmd = policy.RemoveInstanceFromPolicy(self.app, None)

        def find(kind, ref):
            if kind == "instance":
                raise exceptions.NotFound(404)
            return fakes.policy()
        self.client.find.side_effect = find
        parsed = self.check_parser(cmd, ["nightly", "gone"], [])
        cmd.take_action(parsed)
        self.client.policy_remove_instance.assert_called_once_with(
            "pol1", "gone")


class TestShowPolicyRetention(fakes.TestCommand):

    def test_retention(self):
        cmd = policy.ShowPolicyRetention(self.app, None)
        self.client.find.return_value = fakes.policy()
        self.client.policy_retention.return_value = {"instances": [
            {"instance_id": "i1", "backups": [
                {"id": "b1", "created_at": "t", "keep": True,
                 "reasons": ["keep_last"]}]}]}
        parsed = self.check_parser(cmd, ["nightly"], [])
        heads, rows = cmd.take_action(parsed)
        self.client.policy_retention.assert_called_once_with("pol1")
        self.assertEqual(["Instance ID", "Backup ID", "Created At",
                          "Verdict", "Reasons"], heads)
        self.assertEqual(("i1", "b1", "t", "keep"), rows[0][:4])
        self.assertEqual(["keep_last"], rows[0][4].machine_readable())


QUOTA = {"project_id": "p1", "backups": {"limit": 10, "in_use": 2},
         "backup_gigabytes": {"limit": -1, "in_use": 0}}


class TestShowQuota(fakes.TestCommand):

    def test_show_own(self):
        cmd = quota.ShowQuota(self.app, None)
        self.client.quota_get.return_value = QUOTA
        parsed = self.check_parser(cmd, [], [("project", None)])
        cols, data = cmd.take_action(parsed)
        self.client.quota_get.assert_called_once_with("p1")
        self.assertEqual(("project_id", "backups", "backups_in_use",
                          "backup_gigabytes", "backup_gigabytes_in_use"),
                         cols)
        self.assertEqual(("p1", 10, 2, -1, 0), data)


class TestSetQuota(fakes.TestCommand):

    def test_set(self):
        cmd = quota.SetQuota(self.app, None)
        self.client.quota_update.return_value = QUOTA
        self.app.client_manager.identity = None
        parsed = self.check_parser(cmd, ["p1", "--backups", "10"],
                                   [("backups", 10)])
        with __import__("unittest").mock.patch.object(
                quota, "project_id_of", return_value="p1"):
            cmd.take_action(parsed)
            self.client.quota_update.assert_called_once_with(
                "p1", backups=10)
            parsed = self.check_parser(cmd, ["p1"], [])
            self.assertRaises(osc_exc.CommandError, cmd.take_action, parsed)
