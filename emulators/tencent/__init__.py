"""An emulated Tencent IoT Explorer application cloud (seed 002), for tests, the demo and the bench.

It implements the seed's protocol *as the server would*, sharing ``protocols.tencent`` with the
connector:

- HTTP (aiohttp) ``POST /api/exploreropen/appapi`` (signed, pre-login: ``AppGetTokenByWeiXin``)
  and ``POST /api/exploreropen/tokenapi`` (``AccessToken``: ``AppGetUser``, ``AppLogoutUser``,
  ``AppGetFamilyList``, ``AppGetFamilyDeviceList``, ``AppGetDeviceStatuses``, ``AppGetDeviceData``,
  ``AppGetProducts``, ``AppControlDeviceData``, ``AppCallDeviceActionSync``/``Async``). A trailing
  ``/<Action>`` path segment (the Android SDK's form) and query strings are accepted. Replies are
  ``{"Response": {…, "RequestId"}}`` (``envelope="sdk"`` answers ``{"code","msg","data"}`` as the
  official JS SDK expects).
- WebSocket (websockets, ``compression=None``) on its own port at ``/iotstudio_v2_weapp_1`` (any
  path is accepted): ``ActivePush``, ``YunApi`` (``AppDeviceTraceHeartBeat`` and every tokenapi
  action), ``Hello``; ``DeviceChange`` pushes with a base64 ``Payload``.

Error codes. From the seed: ``InvalidParameterValue.InvalidAccessToken`` (bad, expired or
logged-out token), ``ErrorRequiredParamNotFound``, ``InvalidAction``,
``InvalidParameterValue.InvalidJSON``, ``InvalidParameterValue`` (a value the data template
refuses), ``InvalidParameterValue.ErrorUserNotExists`` (login refused), ``ResourceNotFound.AppNotExists``
(unknown AppKey), ``ResourceNotFound.DeviceNotExist``, ``FailedOperation.DeviceOffline``,
``UnauthorizedOperation.NoPermissionToFamily``, ``UnauthorizedOperation.APPNoPermissionToStudioProduct``
(heartbeat for a device that is not the user's). The seed names none for the appapi checks, so
this emulator picks:

- ``InvalidParameterValue.InvalidSignature`` — ``Signature`` does not match;
- ``InvalidParameterValue.TimestampExpired`` — ``Timestamp`` is more than ``timestamp_window``
  seconds (default 300) away from the server clock;
- ``InvalidParameterValue.NonceUsed`` — the same ``Timestamp`` + ``Nonce`` pair was already used
  (the seed: "Nonce … 用于和时间戳一起，防范 API 重放攻击").

Emulator policy (not seed facts): pushes go only to sockets that sent ``ActivePush`` and only for
devices whose trace heartbeat (or ``ActivePush``) is younger than ``trace_timeout`` (90 s); a
socket that sent nothing for ``idle_timeout`` (180 s) is closed with code 1000.

Devices: every user (created on first login by ``WxOpenID``) owns ``devices`` devices, lights
(``power_switch`` bool, ``brightness`` int, ``color`` enum; event ``status_report``; action
``light_blink``) and sensors (``temperature`` float r, ``humidity`` int r; event ``low_voltage``)
alternately. At ``rate`` pushes per second per user they report properties, post events and go
offline/online; ``max_rate`` sends reports as fast as each socket drains (``stamp`` adds a
``sent_ts`` send time, epoch ms, to each report's params: the bench's latency probe). A control changes the device, comes
back as a ``Property``/``Push`` ``control`` push and then a ``Property``/``Report`` push.

Misbehaviour, in-process or by ``POST /_control/<fault>`` with a JSON body:
``drop`` (abort every socket), ``stall {"seconds"}`` (send nothing), ``garble {"count"}`` (the next
frames are garbage: bad JSON, a seed-damaged payload, binary, a push without params),
``expire_tokens``, ``refuse_logins {"count"}`` (-1: until ``0``), ``slow {"seconds"}`` (HTTP
replies), ``heartbeat_errors {"count"}`` (``error: "-1"`` replies), and device drivers ``report
{"device","props"}``, ``event {"device","event","params"}``, ``online``/``offline {"device"}``;
``GET /_control/state`` returns counters. The real cloud's habits, each a knob (constructor,
``simulate`` option and ``/_control``): ``silence {"seconds"}`` (send nothing *and* read nothing,
so WebSocket pings go unanswered too — ``stall`` still answers them); ``report_timestamps
{"unit"}`` — a device message's ``timestamp`` is epoch seconds by default, as in seed 002 (``Time``
has second resolution too), ``"zero"`` (also in the seed) or ``"ms"``, while ``AppGetDeviceData``'s
``LastUpdate`` stays in ms; ``nul_pad {"count"}`` (NUL bytes after each device message, before
base64); ``templates {"form"}`` (``DataTemplate`` as ``"object"``, JSON ``"string"`` or
``"mixed"``, the default).

Layout: ``model`` (products, users, devices), ``http_api`` (appapi/tokenapi), ``push`` (the
WebSocket and its pushes), ``faults`` (``/_control``), ``cloud`` (``TencentCloud`` assembled from
them) and ``cli`` (``simulate tencent``, the demo's cloud).
"""

from __future__ import annotations

from .cli import account_config, add_arguments, demo_cloud, serve
from .cloud import TencentCloud, TencentOptions
from .model import LIGHT_PRODUCT, LIGHT_TEMPLATE, SENSOR_PRODUCT, SENSOR_TEMPLATE, SimToken

__all__ = [
    "LIGHT_PRODUCT",
    "LIGHT_TEMPLATE",
    "SENSOR_PRODUCT",
    "SENSOR_TEMPLATE",
    "SimToken",
    "TencentCloud",
    "TencentOptions",
    "account_config",
    "add_arguments",
    "demo_cloud",
    "serve",
]
