"""``openstack ekko policy ...``: backup policies (schedule, retention)
and the instances they protect."""

import logging

from osc_lib.cli import format_columns
from osc_lib.command import command
from osc_lib import exceptions as osc_exc

from ekkoclient import common
from ekkoclient import exceptions

LOG = logging.getLogger(__name__)

KEEPS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


class RetentionColumn(format_columns.DictColumn):
    def human_readable(self):
        r = self._value or {}
        parts = ["keep_%s=%s" % (k, r["keep_" + k]) for k in KEEPS
                 if r.get("keep_" + k)]
        if r.get("min_age_seconds"):
            parts.append("min_age_seconds=%s" % r["min_age_seconds"])
        return ", ".join(parts) or "keep everything"


def show_policy(policy):
    return common.show_dict(policy, {"retention": RetentionColumn,
                                     "instances": format_columns.ListColumn})


def add_policy_options(parser, create):
    parser.add_argument("--description", metavar="<description>",
                        help="Policy description")
    schedule = parser.add_mutually_exclusive_group()
    schedule.add_argument(
        "--schedule", metavar="<cron>",
        help="When to back up: a 5-field cron expression, e.g. "
             "'0 2 * * *' (in --timezone)")
    schedule.add_argument(
        "--no-schedule", action="store_true",
        help="No schedule: back up on demand only")
    parser.add_argument("--timezone", metavar="<zone>",
                        help="IANA time zone of the schedule and the "
                             "retention calendar (e.g. UTC, Europe/Paris)")
    enabled = parser.add_mutually_exclusive_group()
    enabled.add_argument("--enable", action="store_true", dest="enable",
                         default=None, help="Enable the schedule")
    enabled.add_argument("--disable", action="store_false", dest="enable",
                         help="Disable the schedule")
    for k in KEEPS:
        what = "backups" if k == "last" else "%s backups" % k
        parser.add_argument(
            "--keep-%s" % k, metavar="<n>", type=int, dest="keep_" + k,
            help="Keep the last <n> %s (0: no such rule)" % what)
    parser.add_argument(
        "--min-age", metavar="<seconds>", type=int, dest="min_age_seconds",
        help="Never remove a backup younger than this")
    if create:
        parser.add_argument(
            "--instance", metavar="<instance>", action="append",
            dest="instances", default=[],
            help="Protect this instance with the policy (name or ID; repeat "
                 "for several)")


def policy_fields(parsed_args):
    fields = {}
    if getattr(parsed_args, "name", None) is not None:
        fields["name"] = parsed_args.name
    if parsed_args.description is not None:
        fields["description"] = parsed_args.description
    if parsed_args.no_schedule:
        fields["schedule"] = None
    elif parsed_args.schedule is not None:
        fields["schedule"] = parsed_args.schedule
    if parsed_args.timezone is not None:
        fields["timezone"] = parsed_args.timezone
    if parsed_args.enable is not None:
        fields["enabled"] = parsed_args.enable
    retention = {}
    for k in KEEPS:
        v = getattr(parsed_args, "keep_" + k)
        if v is not None:
            retention["keep_" + k] = v
    if parsed_args.min_age_seconds is not None:
        retention["min_age_seconds"] = parsed_args.min_age_seconds
    if retention:
        fields["retention"] = retention
    return fields


class CreatePolicy(command.ShowOne):
    """Create a backup policy."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="<name>", help="Policy name")
        add_policy_options(parser, create=True)
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        instances = [client.find("instance", i)["id"]
                     for i in parsed_args.instances]
        policy = client.policy_create(**policy_fields(parsed_args))
        if instances:
            for i in instances:
                client.policy_add_instance(policy["id"], i)
            policy = client.policy_get(policy["id"])
        return show_policy(policy)


class ListPolicy(command.Lister):
    """List the project's backup policies."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--long", action="store_true",
                            help="More columns")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        cols = ["id", "name", "schedule", "timezone", "enabled",
                "next_run_at", "instances"]
        heads = ["ID", "Name", "Schedule", "Time Zone", "Enabled",
                 "Next Run At", "Instances"]
        if parsed_args.long:
            cols += ["retention", "description", "project_id"]
            heads += ["Retention", "Description", "Project ID"]
        fmt = {"retention": RetentionColumn,
               "instances": format_columns.ListColumn}
        return heads, common.list_rows(client.policy_list(), cols, fmt)


class ShowPolicy(command.ShowOne):
    """Show a backup policy."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("policy", metavar="<policy>",
                            help="Policy (name or ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        return show_policy(client.find("policy", parsed_args.policy))


class SetPolicy(command.Command):
    """Change a backup policy."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("policy", metavar="<policy>",
                            help="Policy (name or ID)")
        parser.add_argument("--name", metavar="<name>", help="New name")
        add_policy_options(parser, create=False)
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        fields = policy_fields(parsed_args)
        if not fields:
            raise osc_exc.CommandError("Nothing to set")
        policy = client.find("policy", parsed_args.policy)
        client.policy_update(policy["id"], **fields)


class DeletePolicy(command.Command):
    """Delete backup policies (their instances are detached)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("policies", metavar="<policy>", nargs="+",
                            help="Policy(ies) to delete (name or ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        failed = 0
        for ref in parsed_args.policies:
            try:
                client.policy_delete(client.find("policy", ref)["id"])
            except exceptions.EkkoError as e:
                failed += 1
                LOG.error("Failed to delete policy %s: %s", ref, e)
        if failed:
            raise osc_exc.CommandError(
                "%d of %d policies failed to delete." %
                (failed, len(parsed_args.policies)))


class _PolicyInstanceCommand(command.Command):
    """A command on one policy and one instance."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("policy", metavar="<policy>",
                            help="Policy (name or ID)")
        parser.add_argument("instance", metavar="<instance>",
                            help="Instance (name or ID)")
        return parser


class AddInstanceToPolicy(_PolicyInstanceCommand):
    """Protect an instance with a policy (one policy per instance)."""

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        policy = client.find("policy", parsed_args.policy)
        instance = client.find("instance", parsed_args.instance)
        client.policy_add_instance(policy["id"], instance["id"])


class RemoveInstanceFromPolicy(_PolicyInstanceCommand):
    """Stop protecting an instance with a policy."""

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        policy = client.find("policy", parsed_args.policy)
        try:
            instance_id = client.find("instance", parsed_args.instance)["id"]
        except exceptions.NotFound:
            instance_id = parsed_args.instance
        client.policy_remove_instance(policy["id"], instance_id)


class ShowPolicyRetention(command.Lister):
    """What a policy's retention rules keep and remove now, and why
    (a dry run: nothing changes)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("policy", metavar="<policy>",
                            help="Policy (name or ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.ekko
        policy = client.find("policy", parsed_args.policy)
        retention = client.policy_retention(policy["id"])
        rows = []
        for inst in retention.get("instances", []):
            for b in inst.get("backups", []):
                rows.append((inst.get("instance_id"), b.get("id"),
                             b.get("created_at"),
                             "keep" if b.get("keep") else "remove",
                             format_columns.ListColumn(b.get("reasons"))))
        return (["Instance ID", "Backup ID", "Created At", "Verdict",
                 "Reasons"], rows)
