"""Version discovery and microversions through keystoneauth, against a
local server answering as the API does."""

import unittest

from keystoneauth1 import noauth
from keystoneauth1 import session
from keystoneauth1 import token_endpoint

from ekkoclient import exceptions
from ekkoclient.tests.fakeapi import FakeApi
from ekkoclient.v1 import client as v1

BACKUPS = {("GET", "/v1/backups"): (200, {"backups": [{"id": "b1"}]})}


def client(api, endpoint, override=True, api_version=None):
    if override:
        return v1.Client(session.Session(auth=noauth.NoAuth()),
                         endpoint_override=endpoint,
                         api_version=api_version)
    # A token and an endpoint, as a catalog entry gives them.
    return v1.Client(session.Session(
        auth=token_endpoint.Token(endpoint, "tok")), api_version=api_version)


class TestDiscovery(unittest.TestCase):

    def test_root_or_v1_endpoint_catalog_or_override(self):
        for suffix in ("", "/", "/v1", "/v1/"):
            for override in (True, False):
                with FakeApi(BACKUPS) as api:
                    c = client(api, api.url + suffix, override)
                    self.assertEqual([{"id": "b1"}], c.backup_list())
                    self.assertEqual(api.url + "/v1", c.url(""))
                    self.assertEqual(api.url, c.base_url)
                    self.assertEqual("1.0", c.microversion)
                    # discovery, then the request with its microversion
                    self.assertEqual(
                        ("GET", "/v1/backups", "instance-backup 1.0"),
                        api.seen[-1])
                    self.assertIsNone(api.seen[0][2])

    def test_negotiates_the_newest_both_speak(self):
        with FakeApi(BACKUPS, lo="1.0", hi="1.7") as api:
            c = client(api, api.url)
            self.assertEqual("1.0", c.microversion)
            c.backup_list()
            self.assertEqual("instance-backup 1.0", api.seen[-1][2])

    def test_latest_and_major(self):
        for asked in ("1", "latest", None):
            with FakeApi(BACKUPS) as api:
                self.assertEqual("1.0", client(
                    api, api.url, api_version=asked).microversion)

    def test_a_microversion_the_api_does_not_serve(self):
        with FakeApi(BACKUPS, lo="1.2", hi="1.5") as api:
            c = client(api, api.url, api_version="1.0")
            with self.assertRaises(exceptions.EkkoError) as cm:
                c.backup_list()
            self.assertIn("serves 1.2 to 1.5", str(cm.exception))

    def test_a_microversion_the_client_does_not_speak(self):
        with FakeApi(BACKUPS, lo="1.0", hi="1.5") as api:
            with self.assertRaises(exceptions.EkkoError) as cm:
                client(api, api.url, api_version="1.3").microversion
            self.assertIn("python-ekkoclient", str(cm.exception))

    def test_without_a_versions_document(self):
        with FakeApi(BACKUPS, discovery=False) as api:
            c = client(api, api.url + "/v1")
            self.assertEqual([{"id": "b1"}], c.backup_list())
            self.assertEqual("1.0", c.microversion)
            self.assertEqual(("GET", "/v1/backups", "instance-backup 1.0"),
                             api.seen[-1])

    def test_negotiate(self):
        one, five = (1, 0), (1, 5)
        self.assertEqual("1.0", v1.negotiate(None, one, five))
        self.assertEqual("1.0", v1.negotiate("1.0", one, one))
        self.assertRaises(exceptions.EkkoError, v1.negotiate, "2", one, one)
        self.assertRaises(exceptions.EkkoError, v1.negotiate, "1.x", one,
                          one)
        self.assertRaises(exceptions.EkkoError, v1.negotiate, None, (1, 2),
                          five)


if __name__ == "__main__":
    unittest.main()
