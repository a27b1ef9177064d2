"""``openstack ekko export ...``: serve one disk of a backup, read-only,
over NBD from a compute host; list, show and end exports."""

import logging

from osc_lib.command import command
from osc_lib import exceptions as osc_exc

from ekkoclient import common
from ekkoclient import exceptions
from ekkoclient.v1 import backup as backup_cmds

LOG = logging.getLogger(__name__)

# ``--wait`` stops once the export serves, or once it never will.
EXPORT_UP = ("active", "error", "ending", "ended")


def show_export(export):
    return common.show_dict(export)


def wait_export(client, export, interval=2.0, timeout=None):
    """Poll a new export until it serves (``active``); raise if it fails
    (``error``) or ends (``ending``, ``ended``) first."""
    export_id = export["id"]
    last = {"export": export}

    def get():
        last["export"] = client.export_get(export_id)
        status = last["export"].get("status")
        # An export has no progress: the bar fills when it serves.
        return {"status": status,
                "progress": 100 if status == "active" else 0}

    try:
        common.wait_for(get, EXPORT_UP, label="export %s " % export_id,
                        interval=interval, timeout=timeout)
    except TimeoutError as e:
        raise osc_exc.CommandError("Export %s: %s" % (export_id, e))
    export = last["export"]
    status = export.get("status")
    reason = export.get("error") or "no reason"
    if status == "error":
        raise osc_exc.CommandError(
            "Export %s failed: %s" % (export_id, reason))
    if status != "active":
        raise osc_exc.CommandError(
            "Export %s %s before it was active: %s" % (
                export_id, "is ending" if status == "ending" else "ended",
                reason))
    return export


class CreateExport(command.ShowOne):
    """Serve one disk of a backup, read-only, over NBD from a compute host.

    Once the export is ``active``, its ``url`` (``nbd://...``) reads the
    disk as it was at backup time with any NBD client (``qemu-img``,
    ``qemu-nbd``, ``nbdcopy``, a QEMU drive). It ends after ``--lifetime``
    seconds or on ``export delete``. An operator action by default (policy
    ``ekko:export:create``).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="<backup>",
                            help="Backup to export (name or ID)")
        parser.add_argument(
            "--disk", "--device", metavar="<device>", dest="disk",
            help="Disk (device name) to export; needed only when the "
                 "backup has several")
        parser.add_argument(
            "--host", metavar="<host>",
            help="Compute host to serve the export from (default: the "
                 "instance's)")
        parser.add_argument(
            "--lifetime", metavar="<seconds>", type=int,
            help="End the export after this many seconds (default: the "
                 "service's [export] default_lifetime, 3600)")
        parser.add_argument(
            "--source", metavar="<copy>",
            choices=("auto", "primary", "replica"),
            help="Copy to serve: auto (default: the first store, the "
                 "second copy when the first is damaged), primary, or "
                 "replica (the backup's copy in the second store)")
        backup_cmds.add_wait_options(parser, "export")
        # Here --wait waits for the export to serve, not to finish.
        parser._option_string_actions["--wait"].help = (
            "Wait until the export serves (status active), with a progress "
            "bar on stderr; fail with the reason if it fails or ends first")
        return parser

    def take_action(self, parsed_args):
        if parsed_args.lifetime is not None and parsed_args.lifetime <= 0:
            raise osc_exc.CommandError(
                "--lifetime must be a positive number of seconds")
        client = self.app.client_manager.ekko
        backup = client.find("backup", parsed_args.backup)
        export = client.export_create(
            backup["id"], disk=parsed_args.disk, host=parsed_args.host,
            lifetime=parsed_args.lifetime, source=parsed_args.source)
        if parsed_args.wait:
            export = wait_export(client, export, parsed_args.wait_interval,
                                 parsed_args.wait_timeout)
        return show_export(export)


class ListExport(command.Lister):
    """List exports."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--backup", metavar="<backup>",
                            help="Only the exports of this backup "
                                 "(name or ID)")
        parser.add_argument("--all-projects", action="store_true",
                            help="Exports of every project (admin)")
        parser.add_argument("--project", metavar="<project-id>",
                            help="Exports of this project (admin)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        backup_id = None
        if parsed_args.backup:
            try:
                backup_id = client.find("backup", parsed_args.backup)["id"]
            except exceptions.NotFound:
                # A deleted backup's exports are still listed.
                backup_id = parsed_args.backup
        exports = client.export_list(
            backup_id=backup_id,
            all_projects=True if parsed_args.all_projects else None,
            project_id=parsed_args.project)
        cols = ["id", "backup_id", "disk", "host", "status", "url",
                "expires_at"]
        heads = ["ID", "Backup ID", "Disk", "Host", "Status", "URL",
                 "Expires At"]
        if parsed_args.all_projects or parsed_args.project:
            cols.insert(2, "project_id")
            heads.insert(2, "Project ID")
        return heads, common.list_rows(exports, cols)


class ShowExport(command.ShowOne):
    """Show an export (its ``url`` once it is active)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("export", metavar="<export>",
                            help="Export ID")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        return show_export(client.export_get(parsed_args.export))


class DeleteExport(command.Command):
    """End exports: their hosts stop serving them (status ``ending``, then
    ``ended``)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("exports", metavar="<export>", nargs="+",
                            help="Export(s) to end (ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        failed = 0
        for ref in parsed_args.exports:
            try:
                client.export_delete(ref)
            except exceptions.EkkoError as e:
                failed += 1
                LOG.error("Failed to delete export %s: %s", ref, e)
        if failed:
            raise osc_exc.CommandError(
                "%d of %d exports failed to delete." %
                (failed, len(parsed_args.exports)))
