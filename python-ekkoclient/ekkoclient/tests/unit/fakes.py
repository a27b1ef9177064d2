"""Fakes in the style of python-openstackclient's tests: an app whose
client_manager.ekko is a mock of the v1 client, and TestCommand with
check_parser."""

import argparse
import io
import unittest
from unittest import mock

from ekkoclient.v1 import client as v1


class FakeApp(object):
    def __init__(self):
        self.client_manager = mock.Mock()
        self.client_manager.ekko = mock.Mock(spec=v1.Client)
        self.client_manager.auth_ref.project_id = "p1"
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.options = mock.Mock()


class ParserException(Exception):
    pass


class TestCommand(unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.app = FakeApp()
        self.client = self.app.client_manager.ekko

    def check_parser(self, cmd, args, verify_args):
        parser = cmd.get_parser("check_parser")
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            raise ParserException("Argument parse failed")
        for name, value in verify_args:
            self.assertIn(name, parsed)
            self.assertEqual(value, getattr(parsed, name), name)
        return parsed

    def assertParseFails(self, cmd, args):
        with mock.patch("sys.stderr", io.StringIO()):
            self.assertRaises(ParserException, self.check_parser, cmd, args,
                              [])


def backup(**kw):
    b = {"id": "b1", "name": "bk", "instance_id": "i1", "project_id": "p1",
         "status": "available", "kind": "full", "progress": 100,
         "size": 1024, "read_bytes": 512, "new_bytes": 256,
         "stored_bytes": 128, "metadata": {"a": "1"},
         "created_at": "2026-01-01T00:00:00Z", "links": []}
    b.update(kw)
    return b


def instance(**kw):
    i = {"id": "i1", "name": "web1", "status": "ACTIVE", "host": "h1",
         "disks": [{"device": "disk0", "size": 1024}], "protected": False,
         "last_backup": None, "policy_id": None}
    i.update(kw)
    return i


def policy(**kw):
    p = {"id": "pol1", "name": "nightly", "schedule": "0 2 * * *",
         "timezone": "UTC", "enabled": True, "next_run_at": None,
         "instances": [], "retention": {"keep_last": 3},
         "description": None, "project_id": "p1"}
    p.update(kw)
    return p


def restore(**kw):
    r = {"id": "r1", "backup_id": "b1", "status": "queued", "progress": 0,
         "bytes_written": 0, "format": "raw", "error": None,
         "target": {"type": "file", "path": "x.raw", "host": "h1"},
         "created_at": "t"}
    r.update(kw)
    return r


def export(**kw):
    e = {"id": "x1", "backup_id": "b1", "disk": "disk0", "host": "h1",
         "status": "starting", "url": None, "expires_at": "t",
         "lifetime": 3600, "tls": False, "error": None, "project_id": "p1"}
    e.update(kw)
    return e


def find_by_kind(objects):
    """A side effect for client.find: kind -> the object."""
    return lambda kind, ref: objects[kind]
