"""Northbound sources. Import each from its module: etcd and kafka need their extras."""
