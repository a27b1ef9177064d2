"""Ekko API v1 client.

Requests go through a keystoneauth1 :class:`~keystoneauth1.adapter.Adapter`
on the session of the caller (the OSC ClientManager's), so tokens, TLS
options, timing, ``--debug`` logging and re-authentication come from
keystoneauth. The endpoint is the catalog's ``instance-backup`` service
(interface and region from the session's caller) unless overridden.
"""

import logging
import urllib.parse

from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import discover
from keystoneauth1 import exceptions as ks_exc

import ekkoclient
from ekkoclient import exceptions

LOG = logging.getLogger(__name__)

SERVICE_TYPE = "instance-backup"
API_VERSION_HEADER = "OpenStack-API-Version"
# The microversions this client speaks (the API's 1.0 to 1.0 today).
MIN_MICROVERSION = "1.0"
MAX_MICROVERSION = "1.0"
MICROVERSION = MAX_MICROVERSION  # kept for callers of the old name


class Client(object):
    """A thin client of the Ekko REST API v1.

    ``api_version`` is what ``--os-ekko-api-version`` says: a major version
    (``1``: the newest microversion both this client and the API speak),
    a microversion (``1.0``; an error if the API does not serve it) or
    ``latest`` (as ``1``). keystoneauth discovers the API (``GET /``, its
    ``versions`` document) from the catalog endpoint or the override, and
    sends ``OpenStack-API-Version: instance-backup <microversion>`` on
    every request.
    """

    def __init__(self, session, endpoint_override=None, interface=None,
                 region_name=None, service_type=SERVICE_TYPE,
                 service_name=None, api_version=None, **kwargs):
        self.service_type = service_type
        self.api_version = str(api_version) if api_version else None
        self.adapter = ks_adapter.Adapter(
            session,
            service_type=service_type,
            service_name=service_name,
            interface=interface,
            region_name=region_name,
            endpoint_override=endpoint_override,
            client_name="python-ekkoclient",
            client_version=ekkoclient.__version__,
        )
        self._base = None
        self._api_url = None
        self._microversion = None

    # -- plumbing ---------------------------------------------------------

    def _no_endpoint(self):
        return exceptions.EndpointNotFound(
            "No %s endpoint (service ekko) in the catalog for "
            "interface %s, region %s; register it or pass "
            "--os-ekko-endpoint / OS_EKKO_ENDPOINT." % (
                self.service_type,
                self.adapter.interface or "public",
                self.adapter.region_name or "(any)"))

    def _discover(self):
        """The v1 URL and the microversion range, by keystoneauth's version
        discovery; without a versions document (an API that has none, a
        proxy that hides it), the endpoint's root + ``/v1`` and 1.0."""
        data = None
        try:
            data = ks_adapter.Adapter(
                self.adapter.session,
                service_type=self.adapter.service_type,
                service_name=self.adapter.service_name,
                interface=self.adapter.interface,
                region_name=self.adapter.region_name,
                endpoint_override=self.adapter.endpoint_override,
                min_version="1.0", max_version="1.latest",
            ).get_endpoint_data()
        except ks_exc.EndpointNotFound:
            raise self._no_endpoint()
        except (ks_exc.DiscoveryFailure, ks_exc.ClientException) as e:
            LOG.debug("ekko version discovery failed: %s", e)
        if data is not None and data.url and data.api_version:
            lo = data.min_microversion or discover.normalize_version_number(
                MIN_MICROVERSION)
            hi = data.max_microversion or lo
            return data.url.rstrip("/"), lo, hi
        try:
            endpoint = self.adapter.get_endpoint()
        except ks_exc.EndpointNotFound:
            endpoint = None
        if not endpoint:
            raise self._no_endpoint()
        one = discover.normalize_version_number(MIN_MICROVERSION)
        return root_of(endpoint) + "/v1", one, one

    def _negotiate(self):
        url, lo, hi = self._discover()
        self._microversion = negotiate(self.api_version, lo, hi)
        self._api_url = url
        self._base = root_of(url)
        self.adapter.default_microversion = self._microversion
        LOG.debug("ekko API %s, microversion %s (the API serves %s to %s)",
                  url, self._microversion, discover.version_to_string(lo),
                  discover.version_to_string(hi))

    @property
    def base_url(self):
        """The API root (without ``/v1``)."""
        if self._base is None:
            self._negotiate()
        return self._base

    @property
    def microversion(self):
        """The microversion every request asks for (negotiated once)."""
        if self._microversion is None:
            self._negotiate()
        return self._microversion

    def url(self, path):
        if self._api_url is None:
            self._negotiate()
        return self._api_url + path

    def request(self, method, path, json=None, params=None):
        """Send a request; return the decoded body (``None`` if empty)."""
        url = self.url(path)
        headers = {"Accept": "application/json"}
        if params:
            params = {k: _param(v) for k, v in params.items()
                      if v is not None}
        resp = self.adapter.request(
            url, method, json=json, params=params or None, headers=headers,
            microversion=self.microversion, raise_exc=False)
        if resp.status_code >= 400:
            raise exceptions.from_response(
                resp.status_code, resp.content, resp.headers, method, url)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise exceptions.ApiError(
                resp.status_code, title="Bad answer",
                detail="%s %s did not answer JSON" % (method, url))

    def get(self, path, params=None):
        return self.request("GET", path, params=params)

    def post(self, path, body):
        return self.request("POST", path, json=body)

    def put(self, path, body):
        return self.request("PUT", path, json=body)

    def delete(self, path):
        return self.request("DELETE", path)

    def paginate(self, path, key, params=None, limit=None):
        """Every item of a paginated list (``<key>_links`` rel ``next``).

        With ``limit``, one page of at most ``limit`` items.
        """
        params = dict(params or {})
        if limit is not None:
            params["limit"] = limit
            body = self.get(path, params)
            return list(body.get(key, []))
        items = []
        seen = set()
        while True:
            body = self.get(path, params)
            page = body.get(key, [])
            items.extend(page)
            marker = next_marker(body.get(key + "_links"))
            if not page or not marker or marker in seen:
                return items
            seen.add(marker)
            params["marker"] = marker

    # -- backups ----------------------------------------------------------

    def backup_list(self, limit=None, **filters):
        return self.paginate("/backups", "backups", filters, limit=limit)

    def backup_get(self, backup_id):
        return self.get("/backups/%s" % q(backup_id))["backup"]

    def backup_create(self, instance_id, name=None, description=None,
                      mode=None, metadata=None):
        body = {"instance_id": instance_id}
        for k, v in (("name", name), ("description", description),
                     ("mode", mode), ("metadata", metadata)):
            if v is not None:
                body[k] = v
        return self.post("/backups", {"backup": body})["backup"]

    def backup_update(self, backup_id, **fields):
        return self.put("/backups/%s" % q(backup_id),
                        {"backup": fields})["backup"]

    def backup_delete(self, backup_id):
        self.delete("/backups/%s" % q(backup_id))

    def backup_cancel(self, backup_id):
        body = self.post("/backups/%s/action" % q(backup_id), {"cancel": {}})
        return (body or {}).get("backup")

    # -- restores ---------------------------------------------------------

    def restore_create(self, backup_id, path, disk=None, host=None,
                       fmt=None, source=None):
        """Restore one disk to a file (under the host's restore dir).
        ``source``: ``auto`` (default), ``primary`` or ``replica`` (the
        backup's second copy)."""
        target = {"type": "file", "path": path}
        if host:
            target["host"] = host
        body = {"backup_id": backup_id, "target": target}
        if fmt:
            body["format"] = fmt
        return self._restore_post(body, disk, source)

    def restore_create_image(self, backup_id, name, disk=None,
                             disk_format="raw", visibility="private",
                             source=None):
        """Restore one disk into a new Glance image of the caller's
        project (its id is the response's ``target.image_id``)."""
        target = {"type": "image", "name": name,
                  "disk_format": disk_format or "raw",
                  "visibility": visibility}
        return self._restore_post(
            {"backup_id": backup_id, "target": target}, disk, source)

    def _restore_post(self, body, disk=None, source=None):
        if disk:
            body["disk"] = disk
        if source:
            body["source"] = source
        return self.post("/restores", {"restore": body})["restore"]

    def restore_list(self, **filters):
        return self.get("/restores", filters)["restores"]

    def restore_get(self, restore_id):
        return self.get("/restores/%s" % q(restore_id))["restore"]

    def restore_cancel(self, restore_id):
        body = self.post("/restores/%s/action" % q(restore_id),
                         {"cancel": {}})
        return (body or {}).get("restore")

    # -- exports ----------------------------------------------------------

    def export_create(self, backup_id, disk=None, host=None, lifetime=None,
                      source=None):
        """Serve one disk of a backup over NBD from a host (the instance's
        by default) for ``lifetime`` seconds (the API's default: 3600);
        ``source``: ``auto``, ``primary`` or ``replica``."""
        body = {}
        if source:
            body["source"] = source
        if disk:
            body["disk"] = disk
        if host:
            body["host"] = host
        if lifetime is not None:
            body["lifetime"] = lifetime
        return self.post("/backups/%s/exports" % q(backup_id),
                         {"export": body})["export"]

    def export_list(self, limit=None, **filters):
        return self.paginate("/exports", "exports", filters, limit=limit)

    def export_get(self, export_id):
        return self.get("/exports/%s" % q(export_id))["export"]

    def export_delete(self, export_id):
        """End an export (202: ``ending``, then ``ended``)."""
        self.delete("/exports/%s" % q(export_id))

    # -- instances --------------------------------------------------------

    def instance_list(self, **filters):
        return self.get("/instances", filters)["instances"]

    def instance_get(self, instance_id):
        return self.get("/instances/%s" % q(instance_id))["instance"]

    # -- policies ---------------------------------------------------------

    def policy_list(self):
        return self.get("/policies")["policies"]

    def policy_get(self, policy_id):
        return self.get("/policies/%s" % q(policy_id))["policy"]

    def policy_create(self, **fields):
        return self.post("/policies", {"policy": fields})["policy"]

    def policy_update(self, policy_id, **fields):
        return self.put("/policies/%s" % q(policy_id),
                        {"policy": fields})["policy"]

    def policy_delete(self, policy_id):
        self.delete("/policies/%s" % q(policy_id))

    def policy_add_instance(self, policy_id, instance_id):
        self.post("/policies/%s/instances" % q(policy_id),
                  {"instance_id": instance_id})

    def policy_remove_instance(self, policy_id, instance_id):
        self.delete("/policies/%s/instances/%s" % (q(policy_id),
                                                   q(instance_id)))

    def policy_retention(self, policy_id):
        return self.get("/policies/%s/retention" % q(policy_id))["retention"]

    # -- quotas -----------------------------------------------------------

    def quota_get(self, project_id):
        return self.get("/quotas/%s" % q(project_id))["quota"]

    def quota_update(self, project_id, **limits):
        return self.put("/quotas/%s" % q(project_id),
                        {"quota": limits})["quota"]

    # -- name or id -------------------------------------------------------

    def find(self, kind, name_or_id):
        """A backup, instance or policy by id, else by its unique name.

        A miss re-raises the API's 404 for the id (its detail and request
        id); several resources of that name are a :class:`EkkoError`.
        """
        getter = getattr(self, kind + "_get")
        try:
            return getter(name_or_id)
        except exceptions.NotFound as not_found:
            if kind == "backup":
                found = self.backup_list(name=name_or_id)
            else:
                found = [r for r in getattr(self, kind + "_list")()
                         if r.get("name") == name_or_id]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise exceptions.EkkoError(
                    "More than one %s is named %r; use its ID." %
                    (kind, name_or_id))
            raise not_found


def q(value):
    """Quote a path segment."""
    return urllib.parse.quote(str(value), safe="")


def _param(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def negotiate(requested, lo, hi):
    """The microversion to ask for: ``requested`` (``None``, a major
    version, ``latest`` or ``X.Y``) within the API's range ``lo``..``hi``
    (parsed tuples) and this client's."""
    mine_lo = discover.normalize_version_number(MIN_MICROVERSION)
    mine_hi = discover.normalize_version_number(MAX_MICROVERSION)
    lo_s, hi_s = (discover.version_to_string(v) for v in (lo, hi))
    if requested and requested != "latest" and "." in requested:
        try:
            want = discover.normalize_version_number(requested)
        except TypeError:
            raise exceptions.EkkoError(
                "Invalid API version %r: expected MAJOR or MAJOR.MINOR, "
                "e.g. 1 or %s" % (requested, MIN_MICROVERSION))
        if not (lo <= want <= hi):
            raise exceptions.EkkoError(
                "API version %s is not supported by the API, which serves "
                "%s to %s" % (requested, lo_s, hi_s))
        if not (mine_lo <= want <= mine_hi):
            raise exceptions.EkkoError(
                "API version %s is not supported by python-ekkoclient, "
                "which speaks %s to %s" % (
                    requested, MIN_MICROVERSION, MAX_MICROVERSION))
        return discover.version_to_string(want)
    if requested and requested != "latest":
        try:
            major = discover.normalize_version_number(requested)[0]
        except TypeError:
            major = None
        if major != mine_hi[0]:
            raise exceptions.EkkoError(
                "API version %s is not supported; use 1" % requested)
    best = min(hi, mine_hi)
    if best < max(lo, mine_lo):
        raise exceptions.EkkoError(
            "The API serves microversions %s to %s, python-ekkoclient %s to "
            "%s: upgrade one of them" % (lo_s, hi_s, MIN_MICROVERSION,
                                         MAX_MICROVERSION))
    return discover.version_to_string(best)


def root_of(endpoint):
    """The API root of a catalog endpoint (``.../v1`` or the root itself)."""
    base = endpoint.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return base


def next_marker(links):
    """The ``marker`` of the ``next`` link of a ``*_links`` list, if any."""
    for link in links or []:
        if link.get("rel") == "next" and link.get("href"):
            query = urllib.parse.urlparse(link["href"]).query
            markers = urllib.parse.parse_qs(query).get("marker")
            if markers:
                return markers[-1]
    return None
