"""python-ekkoclient: the ``openstack ekko ...`` commands for Ekko."""

import pbr.version

try:
    __version__ = pbr.version.VersionInfo(
        "python-ekkoclient").version_string()
except Exception:  # not installed (e.g. run from the source tree)
    __version__ = "0.0.0"
