"""pbr packaging: setup.cfg's entry points name real commands, and the
plugin module has the hooks python-openstackclient calls."""

import configparser
import importlib
import os
import unittest

from osc_lib.command import command

import ekkoclient
from ekkoclient.osc import plugin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def entry_points(group):
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    out = {}
    for line in cfg["entry_points"][group].strip().splitlines():
        name, _, target = line.partition("=")
        out[name.strip()] = target.strip()
    return out


def load(target):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


class TestPackaging(unittest.TestCase):

    def test_setup_cfg_metadata(self):
        cfg = configparser.ConfigParser()
        cfg.read(os.path.join(ROOT, "setup.cfg"))
        self.assertEqual("python-ekkoclient", cfg["metadata"]["name"])
        self.assertEqual("ekkoclient", cfg["files"]["packages"].strip())
        with open(os.path.join(ROOT, "pyproject.toml")) as f:
            self.assertIn('build-backend = "pbr.build"', f.read())

    def test_cli_extension_is_the_plugin(self):
        self.assertEqual({"ekko": "ekkoclient.osc.plugin"},
                         entry_points("openstack.cli.extension"))
        for hook in ("API_NAME", "API_VERSION_OPTION", "API_VERSIONS",
                     "make_client", "build_option_parser"):
            self.assertTrue(hasattr(plugin, hook), hook)

    def test_every_command_loads(self):
        commands = entry_points("openstack.ekko.v1")
        self.assertEqual(29, len(commands))
        for name, target in commands.items():
            self.assertTrue(name.startswith("ekko_"), name)
            cls = load(target)
            self.assertTrue(issubclass(cls, command.Command), target)
            self.assertTrue(cls.__doc__, target)

    def test_version_is_a_string(self):
        self.assertIsInstance(ekkoclient.__version__, str)


class TestEveryCommandIsTested(unittest.TestCase):

    def test_one_testcase_per_command(self):
        from ekkoclient.tests.unit import test_backup
        from ekkoclient.tests.unit import test_instance_policy_quota
        from ekkoclient.tests.unit import test_restore_export
        tested = set()
        for mod in (test_backup, test_instance_policy_quota,
                    test_restore_export):
            tested |= {n[4:] for n in dir(mod) if n.startswith("Test")}
        for target in entry_points("openstack.ekko.v1").values():
            name = target.partition(":")[2]
            self.assertIn(name, tested, "no Test%s" % name)
