"""Ekko API v1: the client and the ``openstack ekko`` commands."""
