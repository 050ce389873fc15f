"""An emulated Aliyun Living IoT platform (seed 004): API gateway + MQTT app channel.

Two endpoints, as the real platform has:

**HTTP API gateway** (aiohttp). Every request is checked as the gateway would (seed 3. 加签机制):
``X-Ca-Key`` must be the AppKey (else 400 ``Invalid AppKey``); ``X-Ca-Signature`` must equal our
own HMAC-SHA256 over our own string-to-sign, built from the names in ``X-Ca-Signature-Headers``
(``,`` or ``:`` joined, both accepted), else **401** with ``X-Ca-Error-Message: Invalid
Signature, Server StringToSign:`…``` (newlines removed, as the seed says); a ``Content-MD5`` must
match the body; an ``X-Ca-Timestamp`` must be within 15 minutes; a nonce may not repeat. Then
flow control (HTTP 429 ``T429PR`` when throttled), then the service: the ``{id, version,
request: {apiVer, iotToken}, params}`` envelope, the ``iotToken``, and the thing APIs, answering
``{code, message, localizedMsg, data}`` with the seed"s codes (401 token, 460 parameters, 2063
unknown iotId, 2065 not bound, 28504 offline).

**MQTT endpoint**: a small asyncio TCP front reads the client"s CONNECT (``gateway.mqtt.codec``),
verifies the Aliyun credentials (client id extension, ``deviceName&productKey``, HMAC password;
``protocols.aliyun.verify_credentials``) and answers a refused CONNACK (4 bad credentials,
5 unknown device; 0x86/0x87 for MQTT 5) on mismatch. Otherwise it splices the connection byte
for byte to a private mosquitto that the emulator starts itself (no home-made broker). The
front watches (does not alter) what the client sends: SUBSCRIBE to a topic outside the
client"s own ``/sys/{pk}/{dn}/`` tree (such as the root ``#``) or PUBLISH elsewhere closes the
connection, as the real platform refuses them. The emulator"s own client (``MqttClient``)
connects to mosquitto directly: it answers ``app/up/account/bind`` (200; 2043 rejected
iotToken; 2152 account active elsewhere) and ``unbind``, and publishes the device pushes on
``/sys/{pk}/{dn}/app/down/...`` to every app bound to the owning account. A binding ends when
its MQTT connection closes, so a reconnecting client must bind again.

Devices are simulated from their product"s TSL: property changes (``push_interval`` for
random sensor drift), events, status; ``set``/``service invoke`` change devices and push the
change.

Misbehaviour, in-process or by ``POST /_control/<fault>`` with a JSON body:

- ``drop_mqtt``                      close every MQTT connection;
- ``throttle``  ``{"count": n}``     the next n API calls get HTTP 429 (``-1``: until cleared, 0 clears);
- ``reject_token``                   the current iotToken becomes invalid (API 401, bind 2043);
- ``bind_code`` ``{"code": 2152}``   answer binds with this code (``null`` clears);
- ``garble``    ``{"count": n}``     the next n pushes are not JSON;
- ``refuse_connect`` ``{"on": true}`` refuse every CONNECT (rc 5);
- ``tsl_as_string`` ``{"on": true}`` ``/thing/tsl/get`` returns ``data`` as a JSON string;
- ``push_after_bind`` ``{"on": true}`` a successful ``bind_reply`` is followed, in the same write
  to the app's connection, by an event and a property report of the account's first device
  (seed 004 §6.1.2: pushes may follow the bind at once), so the client reads them in one batch;
- ``set_property`` ``{"iot_id", "props", "time"?}``, ``emit_event`` ``{"iot_id", "identifier",
  "value", "type"}``, ``set_status`` ``{"iot_id", "status"}``, ``add_device``, ``remove_device``,
  ``topo_add`` ``{"sub_iot_id", "gw_iot_id", "status"}``, ``ota_progress`` ``{"iot_id", "step"}``;
- ``reset``                          forget pending faults.

``GET /_control/stats`` returns the counters tests assert on (API calls per path, binds,
CONNECTs accepted and refused, 429s).

Layout: ``model`` (products, account, devices and their drivers), ``mqtt`` (the front, binds,
pushes), ``http_api`` (the API gateway), ``faults`` (``/_control``), ``cloud`` (``AliyunCloud``
assembled from them) and ``cli``.
"""

from __future__ import annotations

from .cli import add_arguments, demo_cloud, serve
from .cloud import AliyunCloud, AliyunOptions
from .model import LIGHT_PK, SENSOR_PK

__all__ = ["LIGHT_PK", "SENSOR_PK", "AliyunCloud", "AliyunOptions", "add_arguments", "demo_cloud", "serve"]
