"""The Aliyun emulator's HTTP API gateway: signature, nonce and flow control, then the
thing APIs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from protocols.aliyun import (
    API,
    build_response,
    content_md5,
    parse_request,
    signature_for,
)
from protocols.model import RemoteProtocolError

from ..base import Reject
from .model import (
    NONCE_WINDOW_MS,
    SimDevice,
    now_ms,
)


class HttpApi:
    """The HTTP side of ``AliyunCloud``.

    State it shares (set by ``AliyunCloud.__init__``): ``_nonce_set``, ``_nonces``,
    ``account``, ``app_key``, ``app_secret``, ``devices``, ``page_size_max``, ``products``,
    ``stats``, ``throttle_count``, ``token_lifetime``, ``tsl_as_string``. From the other
    concerns it calls ``_new_token``, ``set_property``.
    """


    def _gateway_error(self, status: int, message: str, code: str = "") -> web.Response:
        headers = {"X-Ca-Error-Message": message}
        if code:
            headers["X-Ca-Error-Code"] = code
        return web.Response(status=status, headers=headers)

    def _check_nonce(self, nonce: str) -> bool:
        now = now_ms()
        while self._nonces and self._nonces[0][0] < now - NONCE_WINDOW_MS:
            self._nonce_set.discard(self._nonces.popleft()[1])
        if nonce in self._nonce_set:
            return False
        self._nonces.append((now, nonce))
        self._nonce_set.add(nonce)
        return True

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        self.stats[f"http {path}"] += 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("x-ca-key") != self.app_key:
            return self._gateway_error(400, "Invalid AppKey", "A400AK")
        given = headers.get("x-ca-signature", "")
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        expected, text = signature_for(self.app_secret, request.method, path, headers, query, body)
        if given != expected:
            self.stats["signature_rejected"] += 1
            return self._gateway_error(
                401, f"Invalid Signature, Server StringToSign:`{text.replace(chr(10), '')}`", "A401AC"
            )
        if "content-md5" in headers and headers["content-md5"] != content_md5(body):
            return self._gateway_error(400, "Invalid Content-MD5", "A400IM")
        ts = headers.get("x-ca-timestamp")
        if ts is not None:
            try:
                if abs(int(ts) - now_ms()) > NONCE_WINDOW_MS:
                    return self._gateway_error(400, "Invalid Timestamp", "A400IT")
            except ValueError:
                return self._gateway_error(400, "Invalid Timestamp", "A400IT")
        nonce = headers.get("x-ca-nonce")
        if nonce is not None and not self._check_nonce(nonce):
            return self._gateway_error(400, "Nonce Used", "A400IN")
        if self.throttle_count:
            if self.throttle_count > 0:
                self.throttle_count -= 1
            self.stats["throttled"] += 1
            return self._gateway_error(429, "Throttled by PLUGIN Flow Control", "T429PR")
        self.stats[f"api {path}"] += 1
        try:
            req = parse_request(body)
        except RemoteProtocolError as exc:
            return web.Response(body=build_response("", 460, None, f"request parameter error: {exc}"),
                                content_type="application/json")
        handler = self._routes().get(path)
        if handler is None:
            return web.Response(body=build_response(req.id, 404, None, "service not found"),
                                content_type="application/json")
        try:
            if path not in ("/kit/debug/ping", "/account/checkOrRefreshSession"):
                self._check_token(req.iot_token)
            data = handler(dict(req.params))
        except Reject as rej:
            return web.Response(body=build_response(req.id, rej.code, None, rej.message),
                                content_type="application/json")
        return web.Response(body=build_response(req.id, 200, data), content_type="application/json")

    def _routes(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            API["ping"].path: lambda p: p.get("input"),
            API["list_bindings"].path: self._api_list_bindings,
            API["tsl"].path: self._api_tsl,
            API["properties_get"].path: self._api_properties_get,
            API["properties_set"].path: self._api_properties_set,
            API["service_invoke"].path: self._api_service_invoke,
            API["status_get"].path: self._api_status_get,
            API["refresh_session"].path: self._api_refresh_session,
        }

    def _check_token(self, token: str | None) -> None:
        if not token or token != self.account.iot_token:
            raise Reject(401, "request auth error")
        if now_ms() > self.account.token_expires_ms:
            raise Reject(401, "iotToken expired")

    def _device(self, params: dict[str, Any]) -> SimDevice:
        iot_id = params.get("iotId")
        if not isinstance(iot_id, str) or not iot_id:
            raise Reject(20050, "iotId required")
        dev = self.devices.get(iot_id)
        if dev is None:
            raise Reject(2063, "iotId not exist")
        if dev.owner != self.account.identity_id:
            raise Reject(2065, "identityId and iotId not bound")
        return dev

    def _api_list_bindings(self, params: dict[str, Any]) -> Any:
        page_no, page_size = params.get("pageNo"), params.get("pageSize")
        if not isinstance(page_no, int) or not isinstance(page_size, int) or page_no < 1 \
                or not 1 <= page_size <= self.page_size_max:
            raise Reject(460, "invalid count or offset")
        mine = [d for d in self.devices.values() if d.owner == self.account.identity_id]
        page = mine[(page_no - 1) * page_size : page_no * page_size]
        return {"total": len(mine), "pageNo": page_no, "pageSize": page_size, "data": [d.listing() for d in page]}

    def _api_tsl(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        tsl = dict(self.products[dev.product_key])
        tsl["profile"] = {"productKey": dev.product_key, "deviceName": dev.device_name}
        return orjson.dumps(tsl).decode() if self.tsl_as_string else tsl

    def _api_properties_get(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        return copy.deepcopy(dev.props)

    def _api_status_get(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        return {"status": dev.status, "time": dev.status_time}

    def _tsl_props(self, dev: SimDevice) -> dict[str, dict[str, Any]]:
        return {p["identifier"]: p for p in self.products[dev.product_key]["properties"]}

    def _api_properties_set(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        items = params.get("items")
        if not isinstance(items, dict) or not items:
            raise Reject(460, "request parameter error: items")
        spec = self._tsl_props(dev)
        for key in items:
            if key not in spec:
                raise Reject(460, f"request parameter error: unknown property {key}")
            if spec[key].get("accessMode") != "rw":
                raise Reject(460, f"request parameter error: {key} is read-only")
        if dev.status != 1:
            raise Reject(28504, "device is offline")
        self.stats["sets"] += 1
        self.set_property(dev.iot_id, items)
        return None

    def _api_service_invoke(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        ident = params.get("identifier")
        services = {s["identifier"]: s for s in self.products[dev.product_key]["services"]}
        if not isinstance(ident, str) or ident not in services:
            raise Reject(460, f"request parameter error: unknown service {ident}")
        args = params.get("args") if isinstance(params.get("args"), dict) else {}
        if dev.status != 1:
            raise Reject(28504, "device is offline")
        self.stats["invokes"] += 1
        output: dict[str, Any] = {}
        if ident == "ToggleLightSwitch":
            current = dev.props.get("LightSwitch", {}).get("value", 0)
            self.set_property(dev.iot_id, {"LightSwitch": 0 if current else 1})
        elif ident == "Blink":
            output = {"blinked": int(args.get("times", 1))}
        elif ident == "Calibrate":
            offset = float(args.get("offset", 0))
            value = float(dev.props["CurrentTemperature"]["value"]) + offset
            self.set_property(dev.iot_id, {"CurrentTemperature": round(value, 1)})
            output = {"result": "ok"}
        return {"data": output}

    def _api_refresh_session(self, params: dict[str, Any]) -> Any:
        request = params.get("request") if isinstance(params.get("request"), dict) else params
        if request.get("refreshToken") != self.account.refresh_token or \
                request.get("identityId") != self.account.identity_id:
            raise Reject(2401, "refreshToken invalid!!")
        self.account.iot_token = self._new_token()
        self.account.refresh_token = self._new_token()
        self.account.token_expires_ms = now_ms() + int(self.token_lifetime * 1000)
        return {
            "identityId": self.account.identity_id,
            "iotToken": self.account.iot_token,
            "iotTokenExpire": int(self.token_lifetime),
            "refreshToken": self.account.refresh_token,
            "refreshTokenExpire": int(self.token_lifetime * 10),
        }
