"""openstacksdk entry for Ekko (service type ``instance-backup``), so that
Python programs use Ekko without the CLI::

    import openstack
    from ekkoclient import sdk

    conn = openstack.connect(cloud="mycloud")
    conn.add_service(sdk.InstanceBackupService(
        service_type="instance-backup"))
    for backup in conn.instance_backup.backups(status="available"):
        print(backup.id, backup.name, backup.size)
"""

from openstack import proxy
from openstack import resource
from openstack import service_description


class Backup(resource.Resource):
    resource_key = "backup"
    resources_key = "backups"
    base_path = "/backups"
    allow_create = True
    allow_fetch = True
    allow_commit = True
    allow_delete = True
    allow_list = True
    commit_method = "PUT"
    _max_microversion = "1.0"

    _query_mapping = resource.QueryParameters(
        "instance_id", "status", "name", "all_projects", "project_id",
        "sort")

    name = resource.Body("name")
    description = resource.Body("description")
    instance_id = resource.Body("instance_id")
    project_id = resource.Body("project_id")
    policy_id = resource.Body("policy_id")
    status = resource.Body("status")
    kind = resource.Body("kind")
    mode = resource.Body("mode")
    progress = resource.Body("progress", type=int)
    size = resource.Body("size", type=int)
    read_bytes = resource.Body("read_bytes", type=int)
    new_bytes = resource.Body("new_bytes", type=int)
    stored_bytes = resource.Body("stored_bytes", type=int)
    dedup_ratio = resource.Body("dedup_ratio")
    compression_ratio = resource.Body("compression_ratio")
    consistency = resource.Body("consistency")
    protected = resource.Body("protected", type=bool)
    metadata = resource.Body("metadata", type=dict)
    disks = resource.Body("disks", type=list)
    error = resource.Body("error")
    created_at = resource.Body("created_at")
    updated_at = resource.Body("updated_at")
    completed_at = resource.Body("completed_at")

    def cancel(self, session):
        """Cancel a queued or running backup."""
        session.post(self.base_path + "/%s/action" % self.id,
                     json={"cancel": {}})


class Restore(resource.Resource):
    resource_key = "restore"
    resources_key = "restores"
    base_path = "/restores"
    allow_create = True
    allow_fetch = True
    allow_list = True
    _max_microversion = "1.0"

    _query_mapping = resource.QueryParameters("all_projects", "project_id")

    backup_id = resource.Body("backup_id")
    project_id = resource.Body("project_id")
    disk = resource.Body("disk")
    format = resource.Body("format")
    target = resource.Body("target", type=dict)
    status = resource.Body("status")
    progress = resource.Body("progress", type=int)
    bytes_written = resource.Body("bytes_written", type=int)
    error = resource.Body("error")
    created_at = resource.Body("created_at")
    updated_at = resource.Body("updated_at")

    def cancel(self, session):
        session.post(self.base_path + "/%s/action" % self.id,
                     json={"cancel": {}})


class Export(resource.Resource):
    resource_key = "export"
    resources_key = "exports"
    base_path = "/exports"
    allow_fetch = True
    allow_delete = True
    allow_list = True
    _max_microversion = "1.0"

    _query_mapping = resource.QueryParameters(
        "backup_id", "all_projects", "project_id")

    backup_id = resource.Body("backup_id")
    project_id = resource.Body("project_id")
    disk = resource.Body("disk")
    host = resource.Body("host")
    status = resource.Body("status")
    url = resource.Body("url")
    tls = resource.Body("tls", type=bool)
    lifetime = resource.Body("lifetime", type=int)
    expires_at = resource.Body("expires_at")
    error = resource.Body("error")
    created_at = resource.Body("created_at")


class BackupExport(resource.Resource):
    """An export being created: ``POST /backups/{backup_id}/exports``
    (then an :class:`Export`)."""
    resource_key = "export"
    base_path = "/backups/%(backup_id)s/exports"
    allow_create = True
    _max_microversion = "1.0"

    backup_id = resource.URI("backup_id")
    project_id = resource.Body("project_id")
    disk = resource.Body("disk")
    host = resource.Body("host")
    status = resource.Body("status")
    url = resource.Body("url")
    tls = resource.Body("tls", type=bool)
    lifetime = resource.Body("lifetime", type=int)
    expires_at = resource.Body("expires_at")
    error = resource.Body("error")
    created_at = resource.Body("created_at")


class Instance(resource.Resource):
    resource_key = "instance"
    resources_key = "instances"
    base_path = "/instances"
    allow_fetch = True
    allow_list = True
    _max_microversion = "1.0"

    _query_mapping = resource.QueryParameters("all_projects")

    name = resource.Body("name")
    project_id = resource.Body("project_id")
    status = resource.Body("status")
    host = resource.Body("host")
    disks = resource.Body("disks", type=list)
    protected = resource.Body("protected", type=bool)
    policy_id = resource.Body("policy_id")
    last_backup = resource.Body("last_backup", type=dict)
    created_at = resource.Body("created_at")
    updated_at = resource.Body("updated_at")


class Policy(resource.Resource):
    resource_key = "policy"
    resources_key = "policies"
    base_path = "/policies"
    allow_create = True
    allow_fetch = True
    allow_commit = True
    allow_delete = True
    allow_list = True
    commit_method = "PUT"
    _max_microversion = "1.0"

    name = resource.Body("name")
    description = resource.Body("description")
    project_id = resource.Body("project_id")
    schedule = resource.Body("schedule")
    timezone = resource.Body("timezone")
    is_enabled = resource.Body("enabled", type=bool)
    retention = resource.Body("retention", type=dict)
    instances = resource.Body("instances", type=list)
    next_run_at = resource.Body("next_run_at")
    created_at = resource.Body("created_at")
    updated_at = resource.Body("updated_at")

    def add_instance(self, session, instance_id):
        session.post(self.base_path + "/%s/instances" % self.id,
                     json={"instance_id": instance_id})

    def remove_instance(self, session, instance_id):
        session.delete(self.base_path + "/%s/instances/%s" % (
            self.id, instance_id))


class Proxy(proxy.Proxy):
    """``conn.instance_backup``: Ekko's API v1."""

    # -- backups
    def backups(self, **query):
        return self._list(Backup, **query)

    def get_backup(self, backup):
        return self._get(Backup, backup)

    def find_backup(self, name_or_id, ignore_missing=True):
        return self._find(Backup, name_or_id, ignore_missing=ignore_missing)

    def create_backup(self, **attrs):
        return self._create(Backup, **attrs)

    def update_backup(self, backup, **attrs):
        return self._update(Backup, backup, **attrs)

    def delete_backup(self, backup, ignore_missing=True):
        return self._delete(Backup, backup, ignore_missing=ignore_missing)

    def cancel_backup(self, backup):
        self._get_resource(Backup, backup).cancel(self)

    # -- restores
    def restores(self, **query):
        return self._list(Restore, **query)

    def get_restore(self, restore):
        return self._get(Restore, restore)

    def create_restore(self, **attrs):
        return self._create(Restore, **attrs)

    def cancel_restore(self, restore):
        self._get_resource(Restore, restore).cancel(self)

    # -- exports
    def exports(self, **query):
        return self._list(Export, **query)

    def get_export(self, export):
        return self._get(Export, export)

    def create_export(self, backup, **attrs):
        backup_id = resource.Resource._get_id(backup)
        return self._create(BackupExport, backup_id=backup_id, **attrs)

    def delete_export(self, export, ignore_missing=True):
        return self._delete(Export, export, ignore_missing=ignore_missing)

    # -- instances
    def instances(self, **query):
        return self._list(Instance, **query)

    def get_instance(self, instance):
        return self._get(Instance, instance)

    # -- policies
    def policies(self, **query):
        return self._list(Policy, **query)

    def get_policy(self, policy):
        return self._get(Policy, policy)

    def find_policy(self, name_or_id, ignore_missing=True):
        return self._find(Policy, name_or_id, ignore_missing=ignore_missing)

    def create_policy(self, **attrs):
        return self._create(Policy, **attrs)

    def update_policy(self, policy, **attrs):
        return self._update(Policy, policy, **attrs)

    def delete_policy(self, policy, ignore_missing=True):
        return self._delete(Policy, policy, ignore_missing=ignore_missing)

    def add_instance_to_policy(self, policy, instance_id):
        self._get_resource(Policy, policy).add_instance(self, instance_id)

    def remove_instance_from_policy(self, policy, instance_id):
        self._get_resource(Policy, policy).remove_instance(self, instance_id)


class InstanceBackupService(service_description.ServiceDescription):
    """Ekko's service description: ``conn.add_service(
    InstanceBackupService(service_type="instance-backup"))``."""

    supported_versions = {"1": Proxy}
