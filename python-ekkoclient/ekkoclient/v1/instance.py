"""``openstack ekko instance ...``: the instances Ekko knows."""

from osc_lib.cli import format_columns
from osc_lib.command import command

from ekkoclient import common
from ekkoclient import timeline


def _disks(disks):
    return ", ".join("%s (%s)" % (d.get("device"), common.human(d.get("size")))
                     for d in disks or [])


class DisksColumn(format_columns.ListDictColumn):
    def human_readable(self):
        return _disks(self._value)


class LastBackupColumn(format_columns.DictColumn):
    """The last backup: ``id (kind, created_at)`` in tables; null in json
    and yaml when the instance has none."""

    def machine_readable(self):
        return dict(self._value) if self._value else None

    def human_readable(self):
        b = self._value
        if not b:
            return ""
        return "%s (%s, %s)" % (b.get("id"), b.get("kind") or "?",
                                b.get("created_at"))


class ListInstance(command.Lister):
    """List the instances Ekko knows."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--all-projects", action="store_true",
                            help="Instances of every project (admin)")
        parser.add_argument("--long", action="store_true",
                            help="More columns")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        instances = client.instance_list(
            all_projects=True if parsed_args.all_projects else None)
        cols = ["id", "name", "status", "host", "disks", "protected",
                "last_backup"]
        heads = ["ID", "Name", "Status", "Host", "Disks", "Protected",
                 "Last Backup"]
        if parsed_args.long:
            cols += ["policy_id", "created_at", "updated_at"]
            heads += ["Policy ID", "Created At", "Updated At"]
        if parsed_args.all_projects:
            cols.insert(2, "project_id")
            heads.insert(2, "Project ID")
        fmt = {"disks": DisksColumn, "last_backup": LastBackupColumn}
        return heads, common.list_rows(instances, cols, fmt)


class ShowInstance(command.ShowOne):
    """Show an instance: its disks, host, last backup and policy."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("instance", metavar="<instance>",
                            help="Instance (name or ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        instance = client.find("instance", parsed_args.instance)
        return common.show_dict(instance, {"disks": DisksColumn,
                                           "last_backup": LastBackupColumn})


class InstanceTimeline(command.Command):
    """An instance's backups over time as a terminal chart.

    One row per available backup, oldest first: the bytes it added (█) and
    the rest of the disk, unchanged since earlier backups or empty (░), on
    one scale.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("instance", metavar="<instance>",
                            help="Instance (name or ID)")
        parser.add_argument("--width", metavar="<cells>", type=int,
                            default=40,
                            help="Bar width in characters (default 40)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        instance = client.find("instance", parsed_args.instance)
        backups = client.backup_list(instance_id=instance["id"],
                                     status="available",
                                     sort="created_at:asc")
        rows = [timeline.TimelineRow.from_backup(b) for b in backups]
        self.app.stdout.write(timeline.render(rows, parsed_args.width))
