"""``openstack ekko restore create`` (into a Glance image or a file),
``openstack ekko backup restore`` (the same) and ``openstack ekko restore
...``."""

from cliff import columns
from osc_lib.cli import format_columns
from osc_lib.command import command
from osc_lib import exceptions as osc_exc

from ekkoclient import common
from ekkoclient.v1 import backup as backup_cmds

# A restore, into a file or an image, ends ``completed`` or ``error``.
RESTORE_DONE = ("completed", "error")
DISK_FORMATS = ("raw", "qcow2")
SOURCES = ("auto", "primary", "replica")


def restore_formatters():
    return {"bytes_written": common.SizeColumn,
            "target": format_columns.DictColumn}


def show_restore(restore):
    """A restore for a ShowOne; an image restore also shows ``image_id``
    (the Glance image, once Ekko has created it) at the top level, for
    ``-c image_id -f value``."""
    target = restore.get("target") or {}
    if target.get("type") == "image":
        restore = dict(restore, image_id=target.get("image_id"))
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


class CreateRestore(command.ShowOne):
    """Restore one disk of a backup into a new Glance image or a file.

    ``--image``: a new private image of the backup's project, which the
    project then boots from (``server create --image``), rebuilds a server
    with (``server rebuild --image``) or makes a volume of (``volume create
    --image``). ``--target``: a file under the host's ``[backup]
    restore_dir`` (never overwritten), an operator action by default
    (policy ``ekko:restore:create``).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("backup", metavar="<backup>",
                            help="Backup to restore (name or ID)")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument(
            "--image", metavar="<name>",
            help="Restore into a new private Glance image of this name")
        where.add_argument(
            "--target", metavar="<relative-path>",
            help="Restore to this file, relative to the host's restore "
                 "directory")
        parser.add_argument(
            "--device", "--disk", metavar="<device>", dest="device",
            help="Disk (device name) to restore; needed only when the "
                 "backup has several")
        parser.add_argument(
            "--host", metavar="<host>",
            help="With --target: compute host to write on (default: the "
                 "instance's)")
        parser.add_argument(
            "--disk-format", metavar="<format>", choices=DISK_FORMATS,
            dest="disk_format",
            help="Format of the image or file: raw (default) or qcow2")
        parser.add_argument(
            "--source", metavar="<copy>", choices=SOURCES,
            help="Copy to read: auto (default: the first store, the "
                 "second copy when the first is damaged or fails), "
                 "primary, or replica (the backup's copy in the second "
                 "store)")
        backup_cmds.add_wait_options(parser, "restore")
        return parser

    def take_action(self, parsed_args):
        if parsed_args.image is not None:
            if parsed_args.host:
                raise osc_exc.CommandError(
                    "--host is for a file restore (--target); an image "
                    "restore (--image) takes no host")
            if not parsed_args.image.strip():
                raise osc_exc.CommandError("--image needs a non-empty name")
        client = self.app.client_manager.ekko
        backup = client.find("backup", parsed_args.backup)
        if parsed_args.image is not None:
            restore = client.restore_create_image(
                backup["id"], parsed_args.image, disk=parsed_args.device,
                disk_format=parsed_args.disk_format or "raw",
                source=parsed_args.source)
        else:
            restore = client.restore_create(
                backup["id"], parsed_args.target, disk=parsed_args.device,
                host=parsed_args.host, fmt=parsed_args.disk_format,
                source=parsed_args.source)
        if parsed_args.wait:
            restore = wait_restore(client, restore, parsed_args.wait_interval,
                                   parsed_args.wait_timeout)
        return show_restore(restore)


class RestoreBackup(CreateRestore):
    """Restore one disk of a backup (as ``ekko restore create``).

    ``--image <name>``: into a new private Glance image of the backup's
    project; ``--target <relative-path>``: to a file on the instance's host
    under its ``[backup] restore_dir`` (never overwritten).
    """


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
                "format", "target", "image_id", "created_at"]
        heads = ["ID", "Backup ID", "Status", "Progress", "Bytes Written",
                 "Format", "Target", "Image ID", "Created At"]
        if parsed_args.all_projects or parsed_args.project:
            cols.insert(2, "project_id")
            heads.insert(2, "Project ID")
        fmt = dict(restore_formatters(), target=TargetColumn)
        return heads, common.list_rows(
            [{c: _column(r, c) for c in cols} for r in restores], cols, fmt)


def _column(restore, col):
    """A list cell's value: an image restore's id and format are in its
    target."""
    target = restore.get("target") or {}
    if col == "image_id":
        return target.get("image_id") if target.get("type") == "image" \
            else None
    if col == "format" and restore.get("format") is None:
        return target.get("disk_format")
    return restore.get(col)


def _target(t):
    """``host:path`` for a file, ``image:<name>`` for an image."""
    t = t or {}
    if t.get("type") == "image":
        return "image:%s" % (t.get("name") or "")
    where = t.get("path", "")
    if t.get("host"):
        where = "%s:%s" % (t["host"], where)
    return where


class TargetColumn(columns.FormattableColumn):
    """A restore's target in a list: ``host:path`` or ``image:<name>``
    (in every format, as the list always showed it)."""

    def human_readable(self):
        return _target(self._value)

    def machine_readable(self):
        return _target(self._value)


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
