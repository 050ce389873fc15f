"""Aliyun Living IoT (生活物联网平台 / Feiyan), application side, sans-I/O (seed 004).

- ``signing``: API-gateway ``X-Ca-Signature`` (3. 加签机制).
- ``envelope``: the ``{id, version, request, params}`` body and ``{code, message, data}`` reply,
  with the error-code dictionary mapped onto the reply contract's categories.
- ``mqtt``: the app channel (6.1.2 长连接服务): CONNECT credentials, topics, bind, push decoding.
- ``thing``: TSL → ``Schema``, command denormalization, the bound-device list.

The connector (``gateway.connectors.aliyun``) and the emulator (``gateway.simulators.aliyun``)
are both thin I/O shells around these functions.
"""

from __future__ import annotations

from .envelope import (
    API,
    Api,
    ApiRequest,
    build_request,
    build_response,
    error_category,
    parse_request,
    parse_response,
)
from .mqtt import (
    BindReply,
    MqttCredentials,
    OtaProgress,
    TopoAddStatus,
    build_bind,
    build_unbind,
    decode_app_message,
    decode_items,
    down_topic,
    down_topics,
    encode_push,
    mqtt_credentials,
    parse_client_id,
    up_topic,
    verify_credentials,
)
from .signing import content_md5, sign_request, signature_for, string_to_sign
from .thing import denormalize, denormalize_value, parse_bindings, tsl_to_schema

__all__ = [
    "API",
    "Api",
    "ApiRequest",
    "BindReply",
    "MqttCredentials",
    "OtaProgress",
    "TopoAddStatus",
    "build_bind",
    "build_request",
    "build_response",
    "build_unbind",
    "content_md5",
    "decode_app_message",
    "decode_items",
    "denormalize",
    "denormalize_value",
    "down_topic",
    "down_topics",
    "encode_push",
    "error_category",
    "mqtt_credentials",
    "parse_bindings",
    "parse_client_id",
    "parse_request",
    "parse_response",
    "sign_request",
    "signature_for",
    "string_to_sign",
    "tsl_to_schema",
    "up_topic",
    "verify_credentials",
]
