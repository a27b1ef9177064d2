"""python-openstackclient plugin for Ekko (``openstack ekko ...``).

Ekko's service type is ``instance-backup`` (service name ``ekko``);
``backup`` is freezer's. The client finds the endpoint in the Keystone
catalog through the ClientManager's keystoneauth session, with the
interface and region of the command line, unless ``--os-ekko-endpoint``
(or ``OS_EKKO_ENDPOINT``, or ``instance_backup_endpoint_override`` in
clouds.yaml) names it.
"""

import importlib
import logging

from osc_lib import exceptions as osc_exc
from osc_lib import utils

LOG = logging.getLogger(__name__)

DEFAULT_API_VERSION = "1"
API_VERSION_OPTION = "os_ekko_api_version"
API_NAME = "ekko"
API_VERSIONS = {
    "1": "ekkoclient.v1.client.Client",
}
SERVICE_TYPE = "instance-backup"


def _endpoint_override(instance):
    config = {}
    try:
        config = instance.get_configuration() or {}
    except Exception:  # an older ClientManager without the config
        cli_options = getattr(instance, "_cli_options", None)
        config = getattr(cli_options, "config", {}) or {}
    # argparse's os_ekko_endpoint arrives without its os_ prefix.
    return (config.get("ekko_endpoint") or
            config.get("os_ekko_endpoint") or
            config.get("instance_backup_endpoint_override") or
            utils.env("OS_EKKO_ENDPOINT") or None)


def _client_class(version):
    path = API_VERSIONS.get(str(version))
    if path is None:
        raise osc_exc.UnsupportedVersion(
            "ekko API version %s is not supported; use one of: %s" %
            (version, ", ".join(sorted(API_VERSIONS))))
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def make_client(instance):
    """Return the Ekko client for the ClientManager ``instance``."""
    version = str(instance._api_version.get(API_NAME) or
                  DEFAULT_API_VERSION)
    # "1", "1.0" or "latest": the major picks the client class; the client
    # negotiates the microversion with the API (keystoneauth discovery).
    major = "1" if version == "latest" else version.split(".")[0]
    client_class = _client_class(major)
    endpoint = _endpoint_override(instance)
    LOG.debug("Instantiating ekko client %s (endpoint override %s)",
              client_class, endpoint)
    return client_class(
        session=instance.session,
        endpoint_override=endpoint,
        interface=instance.interface or "public",
        region_name=instance.region_name,
        service_type=SERVICE_TYPE,
        api_version=version,
    )


def build_option_parser(parser):
    """Add Ekko's global options."""
    parser.add_argument(
        "--os-ekko-api-version", "--os-instance-backup-api-version",
        metavar="<ekko-api-version>",
        dest=API_VERSION_OPTION,
        default=utils.env("OS_EKKO_API_VERSION",
                          "OS_INSTANCE_BACKUP_API_VERSION",
                          default=DEFAULT_API_VERSION),
        help="Ekko (instance-backup) API version: 1 (the newest "
             "microversion both ends speak), a microversion such as 1.0, "
             "or latest; default=%s (Env: OS_EKKO_API_VERSION or "
             "OS_INSTANCE_BACKUP_API_VERSION)" % DEFAULT_API_VERSION,
    )
    parser.add_argument(
        "--os-ekko-endpoint",
        metavar="<ekko-endpoint>",
        default=utils.env("OS_EKKO_ENDPOINT"),
        help="Ekko API endpoint, instead of the catalog's instance-backup "
             "service (Env: OS_EKKO_ENDPOINT)",
    )
    return parser
