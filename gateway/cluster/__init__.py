"""Cluster mode: several gateway instances share the accounts through NATS JetStream.

Imported only when the configuration has a ``[cluster]`` section (it needs the ``cluster``
extra, nats-py); a single instance never loads it. The parts:

* ``leases``: accounts → fixed slots; slots leased in a KV bucket with compare-and-set,
  renewed, rebalanced sticky and paced, self-fenced before a lease could expire;
* ``kvtokens``: the vendor tokens in a KV bucket, mirrored in memory for the connectors'
  synchronous ``load()``/``save()``;
* ``routing``: each command arrives at one instance (MQTT 5 shared subscription) and is run by
  the instance that runs its device or account (NATS request/reply), answered once;
* ``node``: ``Cluster``, which wires these to the gateway's ``start_account``/``stop_account``,
  and (``shared_egress``) publishes the pacer's demand in each lease round and shares the
  per-IP budgets by the live instances' demands (gateway/rates.py, "Sharing by demand").
"""

from .node import Cluster

__all__ = ["Cluster"]
