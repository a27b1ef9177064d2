"""The openstacksdk entry: a Connection with the service added, against a
local server answering as the API does."""

import unittest
import warnings

import openstack.config
from openstack import connection

from ekkoclient import sdk
from ekkoclient.tests.fakeapi import FakeApi

BACKUP = {"id": "b1", "name": "bk", "status": "available", "size": 1024,
          "instance_id": "i1", "metadata": {"a": "1"}, "protected": False}


def connect(url):
    region = openstack.config.get_cloud_region(
        load_yaml_config=False, load_envvars=False, auth_type="none",
        auth={"endpoint": url},
        instance_backup_endpoint_override=url + "/v1/")
    conn = connection.Connection(config=region)
    conn.add_service(sdk.InstanceBackupService(
        service_type="instance-backup"))
    return conn


class TestSdk(unittest.TestCase):

    def setUp(self):
        # openstacksdk's own deprecation warnings (influxdb, ...).
        cm = warnings.catch_warnings()
        cm.__enter__()
        self.addCleanup(cm.__exit__, None, None, None)
        warnings.simplefilter("ignore")

    def test_backups(self):
        bodies = {
            ("GET", "/v1/backups"): (200, {"backups": [BACKUP]}),
            ("GET", "/v1/backups/b1"): (200, {"backup": BACKUP}),
            ("POST", "/v1/backups"): (202, {"backup": dict(
                BACKUP, status="queued")}),
            ("DELETE", "/v1/backups/b1"): (204, None),
            ("POST", "/v1/backups/b1/action"): (202, None),
        }
        with FakeApi(bodies) as api:
            eb = connect(api.url).instance_backup
            backups = list(eb.backups(status="available"))
            self.assertEqual(["b1"], [b.id for b in backups])
            self.assertEqual(1024, backups[0].size)
            self.assertEqual({"a": "1"}, backups[0].metadata)
            self.assertIn(("GET", "/v1/backups?status=available",
                           "instance-backup 1.0"), api.seen)
            self.assertEqual("bk", eb.get_backup("b1").name)
            new = eb.create_backup(instance_id="i1", name="bk")
            self.assertEqual("queued", new.status)
            eb.delete_backup("b1")
            eb.cancel_backup("b1")
            self.assertEqual(["GET", "GET", "POST", "DELETE", "POST"],
                             [m for m, path, _ in api.seen
                              if path.startswith("/v1/backups")])

    def test_policies_instances_exports_restores(self):
        pol = {"id": "p1", "name": "nightly", "enabled": True,
               "retention": {"keep_last": 3}, "instances": []}
        bodies = {
            ("GET", "/v1/policies"): (200, {"policies": [pol]}),
            ("POST", "/v1/policies/p1/instances"): (204, None),
            ("GET", "/v1/instances/i1"): (200, {"instance": {
                "id": "i1", "name": "web1", "disks": []}}),
            ("POST", "/v1/backups/b1/exports"): (202, {"export": {
                "id": "x1", "backup_id": "b1", "status": "starting"}}),
            ("GET", "/v1/restores"): (200, {"restores": [{
                "id": "r1", "status": "completed",
                "target": {"type": "file"}}]}),
        }
        with FakeApi(bodies) as api:
            eb = connect(api.url).instance_backup
            (p,) = list(eb.policies())
            self.assertTrue(p.is_enabled)
            self.assertEqual({"keep_last": 3}, p.retention)
            eb.add_instance_to_policy("p1", "i1")
            self.assertEqual("web1", eb.get_instance("i1").name)
            x = eb.create_export("b1", lifetime=600)
            self.assertEqual(("x1", "starting"), (x.id, x.status))
            self.assertEqual(["r1"], [r.id for r in eb.restores()])


if __name__ == "__main__":
    unittest.main()
