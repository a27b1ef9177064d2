"""python-ekkoclient: the ``openstack ekko ...`` commands for Ekko."""

__version__ = "0.1.0"
