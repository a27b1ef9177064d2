"""``openstack ekko backup ...``: back up instances, list, show, change,
cancel and delete backups."""

import logging

from osc_lib.cli import format_columns
from osc_lib.cli import parseractions
from osc_lib.command import command
from osc_lib import exceptions as osc_exc

from ekkoclient import common
from ekkoclient import exceptions

LOG = logging.getLogger(__name__)

BACKUP_STATUSES = ("queued", "running", "available", "error", "deleting",
                   "deleted")
BACKUP_DONE = ("available", "error", "deleted")
SORTS = ("created_at", "created_at:asc", "created_at:desc")

SIZE_FIELDS = ("size", "read_bytes", "new_bytes", "stored_bytes")


def backup_formatters():
    f = {k: common.SizeColumn for k in SIZE_FIELDS}
    f["metadata"] = format_columns.DictColumn
    # Where the second copy stands (shown by ``backup show`` when the cloud
    # keeps second copies).
    f["replication"] = format_columns.DictColumn
    return f


def show_backup(backup):
    return common.show_dict(backup, backup_formatters())


def wait_backup(client, backup, interval=2.0, timeout=None):
    """Poll a backup to its end; raise if it ends in ``error``."""
    label = "backup %s " % backup["id"]
    try:
        backup = common.wait_for(
            lambda: client.backup_get(backup["id"]), BACKUP_DONE,
            label=label, interval=interval, timeout=timeout)
    except TimeoutError as e:
        raise osc_exc.CommandError("Backup %s: %s" % (backup["id"], e))
    if backup["status"] == "error":
        raise osc_exc.CommandError(
            "Backup %s failed: %s" % (backup["id"],
                                      backup.get("error") or "no reason"))
    if backup["status"] == "deleted":
        raise osc_exc.CommandError("Backup %s was deleted" % backup["id"])
    return backup


def add_wait_options(parser, what):
    parser.add_argument(
        "--wait", action="store_true",
        help="Wait for the %s to finish, with a progress bar on stderr; "
             "fail if it ends in error" % what)
    parser.add_argument(
        "--wait-interval", type=float, default=2.0, metavar="<seconds>",
        help="Seconds between polls with --wait (default 2)")
    parser.add_argument(
        "--wait-timeout", type=float, default=None, metavar="<seconds>",
        help="Give up waiting after this many seconds (default: never)")


class CreateBackup(command.ShowOne):
    """Back up an instance now."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "instance", metavar="<instance>",
            help="Instance to back up (name or ID)")
        parser.add_argument("--name", metavar="<name>", help="Backup name")
        parser.add_argument("--description", metavar="<description>",
                            help="Backup description")
        parser.add_argument(
            "--full", action="store_true",
            help="Read every allocated block, not only those changed since "
                 "the last backup (mode full; default auto)")
        parser.add_argument(
            "--property", metavar="<key=value>",
            action=parseractions.KeyValueAction, dest="properties",
            help="Metadata to store with the backup (repeat for several)")
        add_wait_options(parser, "backup")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        metadata = parsed_args.properties or {}
        instance = client.find("instance", parsed_args.instance)
        backup = client.backup_create(
            instance["id"], name=parsed_args.name,
            description=parsed_args.description,
            mode="full" if parsed_args.full else None,
            metadata=metadata or None)
        if parsed_args.wait:
            backup = wait_backup(client, backup, parsed_args.wait_interval,
                                 parsed_args.wait_timeout)
        return show_backup(backup)


class ListBackup(command.Lister):
    """List backups (newest first)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--instance", metavar="<instance>",
                            help="Only the backups of this instance "
                                 "(name or ID)")
        parser.add_argument("--status", metavar="<status>",
                            choices=BACKUP_STATUSES,
                            help="Only backups in this status (%s)" %
                                 ", ".join(BACKUP_STATUSES))
        parser.add_argument("--name", metavar="<name>",
                            help="Only backups of this name")
        parser.add_argument("--all-projects", action="store_true",
                            help="Backups of every project (admin)")
        parser.add_argument("--project", metavar="<project-id>",
                            help="Backups of this project (admin)")
        parser.add_argument("--limit", metavar="<n>", type=int,
                            help="One page of at most <n> backups "
                                 "(default: every page)")
        parser.add_argument("--marker", metavar="<backup-id>",
                            help="Start after this backup")
        parser.add_argument("--sort", metavar="<key[:dir]>", choices=SORTS,
                            help="created_at, created_at:asc or "
                                 "created_at:desc (default)")
        parser.add_argument("--long", action="store_true",
                            help="More columns")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        instance_id = None
        if parsed_args.instance:
            try:
                instance_id = client.find("instance",
                                          parsed_args.instance)["id"]
            except exceptions.NotFound:
                # An instance Ekko forgot may still have backups.
                instance_id = parsed_args.instance
        filters = {
            "instance_id": instance_id,
            "status": parsed_args.status,
            "name": parsed_args.name,
            "all_projects": True if parsed_args.all_projects else None,
            "project_id": parsed_args.project,
            "marker": parsed_args.marker,
            "sort": parsed_args.sort,
        }
        backups = client.backup_list(limit=parsed_args.limit, **filters)
        cols = ["id", "name", "instance_id", "status", "kind", "progress",
                "size", "created_at"]
        heads = ["ID", "Name", "Instance ID", "Status", "Kind", "Progress",
                 "Size", "Created At"]
        if parsed_args.long:
            cols += ["read_bytes", "new_bytes", "stored_bytes", "dedup_ratio",
                     "compression_ratio", "consistency", "protected",
                     "policy_id", "error"]
            heads += ["Read", "New", "Stored", "Dedup Ratio",
                      "Compression Ratio", "Consistency", "Protected",
                      "Policy ID", "Error"]
        if parsed_args.all_projects or parsed_args.project:
            cols.insert(3, "project_id")
            heads.insert(3, "Project ID")
        return heads, common.list_rows(backups, cols, backup_formatters())


class ShowBackup(command.ShowOne):
    """Show a backup."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="<backup>",
                            help="Backup (name or ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        return show_backup(client.find("backup", parsed_args.backup))


class SetBackup(command.Command):
    """Rename, describe or protect a backup, or change its properties."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="<backup>",
                            help="Backup (name or ID)")
        parser.add_argument("--name", metavar="<name>", help="New name")
        parser.add_argument("--description", metavar="<description>",
                            help="New description")
        protect = parser.add_mutually_exclusive_group()
        protect.add_argument(
            "--protected", action="store_true", default=None,
            help="Protect the backup: it cannot be deleted, and retention "
                 "keeps it")
        protect.add_argument(
            "--unprotected", action="store_false", dest="protected",
            help="Remove the protection")
        parser.add_argument(
            "--property", metavar="<key=value>",
            action=parseractions.KeyValueAction, dest="properties",
            help="Set a metadata property (repeat for several)")
        parser.add_argument(
            "--no-property", action="store_true",
            help="Remove every metadata property first (with --property: "
                 "replace them)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        properties = parsed_args.properties or {}
        fields = {}
        for k in ("name", "description", "protected"):
            v = getattr(parsed_args, k)
            if v is not None:
                fields[k] = v
        if not fields and not properties and not parsed_args.no_property:
            raise osc_exc.CommandError(
                "Nothing to set: use --name, --description, --protected, "
                "--unprotected, --property or --no-property")
        backup = client.find("backup", parsed_args.backup)
        if properties or parsed_args.no_property:
            metadata = {} if parsed_args.no_property else dict(
                backup.get("metadata") or {})
            metadata.update(properties)
            fields["metadata"] = metadata
        client.backup_update(backup["id"], **fields)


class UnsetBackup(command.Command):
    """Remove metadata properties of a backup."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="<backup>",
                            help="Backup (name or ID)")
        parser.add_argument(
            "--property", metavar="<key>", action="append",
            dest="properties", default=[], required=True,
            help="Property to remove (repeat for several)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        backup = client.find("backup", parsed_args.backup)
        metadata = dict(backup.get("metadata") or {})
        for key in parsed_args.properties:
            metadata.pop(key, None)
        client.backup_update(backup["id"], metadata=metadata)


class DeleteBackup(command.Command):
    """Delete backups (their space is reclaimed in the background)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backups", metavar="<backup>", nargs="+",
                            help="Backup(s) to delete (name or ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        failed = 0
        for ref in parsed_args.backups:
            try:
                backup = client.find("backup", ref)
                client.backup_delete(backup["id"])
            except exceptions.EkkoError as e:
                failed += 1
                LOG.error("Failed to delete backup %s: %s", ref, e)
        if failed:
            raise osc_exc.CommandError(
                "%d of %d backups failed to delete." %
                (failed, len(parsed_args.backups)))


class CancelBackup(command.Command):
    """Cancel a queued or running backup (it fails at once)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="<backup>",
                            help="Backup (name or ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        backup = client.find("backup", parsed_args.backup)
        client.backup_cancel(backup["id"])
