"""``openstack ekko backup restore`` and ``openstack ekko restore ...``."""

from osc_lib.command import command
from osc_lib import exceptions as osc_exc

from ekkoclient import common
from ekkoclient.v1 import backup as backup_cmds

RESTORE_DONE = ("completed", "error")


def restore_formatters():
    return {"bytes_written": common.SizeColumn,
            "target": common.JsonColumn}


def show_restore(restore):
    return common.show_dict(restore, restore_formatters())


def wait_restore(client, restore, interval=2.0, timeout=None):
    try:
        restore = common.wait_for(
            lambda: client.restore_get(restore["id"]), RESTORE_DONE,
            label="restore %s " % restore["id"], interval=interval,
            timeout=timeout)
    except TimeoutError as e:
        raise osc_exc.CommandError("Restore %s: %s" % (restore["id"], e))
    if restore["status"] == "error":
        raise osc_exc.CommandError(
            "Restore %s failed: %s" % (restore["id"],
                                       restore.get("error") or "no reason"))
    return restore


class RestoreBackup(command.ShowOne):
    """Restore one disk of a backup to a file on the instance's host.

    The file is created under the host's ``[backup] restore_dir`` (never
    overwritten); an operator action (policy ``ekko:restore:create``).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="<backup>",
                            help="Backup to restore (name or ID)")
        parser.add_argument(
            "--target", metavar="<relative-path>", required=True,
            help="File to write, relative to the host's restore directory")
        parser.add_argument(
            "--device", "--disk", metavar="<device>", dest="device",
            help="Disk (device name) to restore; needed only when the "
                 "backup has several")
        parser.add_argument(
            "--host", metavar="<host>",
            help="Compute host to write on (default: the instance's)")
        parser.add_argument(
            "--disk-format", metavar="<format>", choices=("raw", "qcow2"),
            dest="disk_format",
            help="Format of the file: raw (default) or qcow2")
        backup_cmds.add_wait_options(parser, "restore")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        backup = client.find("backup", parsed_args.backup)
        restore = client.restore_create(
            backup["id"], parsed_args.target, disk=parsed_args.device,
            host=parsed_args.host, fmt=parsed_args.disk_format)
        if parsed_args.wait:
            restore = wait_restore(client, restore, parsed_args.wait_interval,
                                   parsed_args.wait_timeout)
        return show_restore(restore)


class ListRestore(command.Lister):
    """List restores."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--all-projects", action="store_true",
                            help="Restores of every project (admin)")
        parser.add_argument("--project", metavar="<project-id>",
                            help="Restores of this project (admin)")
        parser.add_argument("--backup", metavar="<backup-id>",
                            help="Only the restores of this backup")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        restores = client.restore_list(
            all_projects=True if parsed_args.all_projects else None,
            project_id=parsed_args.project)
        if parsed_args.backup:
            # The API has no backup filter; filter here.
            restores = [r for r in restores
                        if r.get("backup_id") == parsed_args.backup]
        cols = ["id", "backup_id", "status", "progress", "bytes_written",
                "format", "target", "created_at"]
        heads = ["ID", "Backup ID", "Status", "Progress", "Bytes Written",
                 "Format", "Target", "Created At"]
        if parsed_args.all_projects or parsed_args.project:
            cols.insert(2, "project_id")
            heads.insert(2, "Project ID")
        fmt = restore_formatters()
        fmt["target"] = _target
        rows = [tuple(fmt[c](r.get(c)) if c in fmt else r.get(c)
                      for c in cols) for r in restores]
        return heads, rows


def _target(t):
    t = t or {}
    where = t.get("path", "")
    if t.get("host"):
        where = "%s:%s" % (t["host"], where)
    return where


class ShowRestore(command.ShowOne):
    """Show a restore."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("restore", metavar="<restore>",
                            help="Restore ID")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        return show_restore(client.restore_get(parsed_args.restore))


class CancelRestore(ShowRestore):
    """Cancel a queued or running restore (it fails at once)."""

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        return show_restore(client.restore_cancel(parsed_args.restore))
