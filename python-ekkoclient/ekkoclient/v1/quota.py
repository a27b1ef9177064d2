"""``openstack ekko quota show|set``: a project's limits and usage."""

from osc_lib.command import command
from osc_lib import exceptions as osc_exc

RESOURCES = ("backups", "backup_gigabytes")


def project_id_of(app, ref):
    """The ID of project ``ref`` (name or ID) or of the current project."""
    cm = app.client_manager
    if not ref:
        return cm.auth_ref.project_id
    try:
        from openstackclient.identity import common as identity_common
        return identity_common.find_project(cm.identity, ref).id
    except ImportError:  # without python-openstackclient: take it as an ID
        return ref


def show_quota(quota):
    cols = ["project_id"]
    vals = [quota.get("project_id")]
    for r in RESOURCES:
        usage = quota.get(r) or {}
        cols += [r, r + "_in_use"]
        vals += [usage.get("limit"), usage.get("in_use")]
    return tuple(cols), tuple(vals)


class ShowQuota(command.ShowOne):
    """Show a project's backup limits and usage (-1: unlimited)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "project", metavar="<project>", nargs="?",
            help="Project (name or ID; default: the current project)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        project = project_id_of(self.app, parsed_args.project)
        return show_quota(client.quota_get(project))


class SetQuota(command.ShowOne):
    """Set a project's backup limits (admin; -1: unlimited)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("project", metavar="<project>",
                            help="Project (name or ID)")
        parser.add_argument("--backups", metavar="<n>", type=int,
                            help="Most backups the project may keep")
        parser.add_argument("--backup-gigabytes", metavar="<gib>", type=int,
                            help="Most GiB of backups the project may keep")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        limits = {k: getattr(parsed_args, k) for k in RESOURCES
                  if getattr(parsed_args, k) is not None}
        if not limits:
            raise osc_exc.CommandError(
                "Nothing to set: use --backups or --backup-gigabytes")
        project = project_id_of(self.app, parsed_args.project)
        return show_quota(client.quota_update(project, **limits))
