"""Real etcd processes for tests and benches: moved into the package
(:mod:`datasync.testing.procs`); this module keeps the old import path."""

from __future__ import annotations

from datasync.testing.procs import ETCD, ETCDCTL, EtcdCluster, EtcdMember, etcdctl, free_port

ENV_ENDPOINTS = "DATASYNC_ETCD_ENDPOINTS"

__all__ = ["ENV_ENDPOINTS", "ETCD", "ETCDCTL", "EtcdCluster", "EtcdMember", "etcdctl", "free_port"]
