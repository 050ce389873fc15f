"""An emulated XiakeCloud: the seed"s client API over HTTP, for the demo and the tests.

It serves the calls of ``protocols.xky.api.ENDPOINTS`` as the cloud would: it reads each request
with the shared codec (``parse_request``: GET query or POST JSON as the seed marks it, a wrong
method is refused), checks the ``session`` of every call but ``login``, answers in the assumed
envelope (``protocols.xky.envelope``), and returns results "encrypted" (base64) when a call does
not ask for ``source: true``. Sessions expire after ``session_ttl`` seconds (default: never,
since the seed names no lifetime); temporary sessions after 5 minutes (seed), both options.

Accounts have sub-control accounts (which log in with ``subaccount`` and see only the devices
given to them), node servers, devices and a group-control list. Devices can come and go and
change on their own (``churn_interval``, ``change_interval``), and tests can drive them directly.

Misbehaviour, for tests and the demo, in-process or by ``POST /_control/<fault>`` with a JSON body:

- ``fail``       ``{"count": 1, "status": 500, "path": null}`` — answer HTTP ``status`` with a text page;
- ``slow``       ``{"seconds": 2, "count": 1, "path": null}`` — delay the reply;
- ``malformed``  ``{"count": 1, "kind": "garble"|"shape"|"record", "path": null}`` — a body that
  is not JSON, a payload of the wrong type, or a device list with a record lacking ``sn``;
- ``expire_sessions`` — every session becomes invalid (the next call gets the session code);
- ``add_device`` / ``remove_device`` / ``update_device`` ``{"sn": …, "name": …, "online": …}``;
- ``reset`` — forget pending faults.

``path`` limits a fault to one call (``"/get_device_list"``); faults are consumed in order.
"""

from __future__ import annotations

from .cloud import XkyCloud, XkyOptions, add_arguments, demo_cloud, serve

__all__ = ["XkyCloud", "XkyOptions", "add_arguments", "demo_cloud", "serve"]
