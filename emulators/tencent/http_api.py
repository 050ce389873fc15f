"""The Tencent emulator's HTTP API: ``appapi`` (signed login) and ``tokenapi`` (every action
of an ``AccessToken``, which the WebSocket's ``YunApi`` shares).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from protocols.model import CommandError
from protocols.tencent import api as tapi
from protocols.tencent.sign import verify
from protocols.tencent.template import denormalize
from protocols.tsl import validate

from ..base import Reject
from .model import (
    ERR_ACTION,
    ERR_APP,
    ERR_DEVICE,
    ERR_FAMILY,
    ERR_JSON,
    ERR_LOGIN,
    ERR_MISSING,
    ERR_NONCE,
    ERR_OFFLINE,
    ERR_PARAM,
    ERR_SIGNATURE,
    ERR_TIMESTAMP,
    ERR_TOKEN,
    PRODUCTS,
    SimDevice,
    SimToken,
    SimUser,
    now_ms,
    required_list,
)


class HttpApi:
    """The HTTP side of ``TencentCloud``.

    State it shares (set by ``TencentCloud.__init__``): ``_nonces``, ``_refuse_logins``,
    ``_seq``, ``_slow``, ``_stopping``, ``app_key``, ``app_secret``, ``calls``, ``devices``,
    ``envelope``, ``latency``, ``stats``, ``templates``, ``timestamp_window``,
    ``token_lifetime``, ``tokens``, ``users``. From the other concerns it calls ``_push``,
    ``_spawn``, ``report``, ``user_for``.
    """

    async def _watchdog(self) -> None:
        """Forget replayed-nonce entries that left the timestamp window."""
        while True:
            await asyncio.sleep(max(1.0, self.timestamp_window / 4))
            horizon = time.time() - self.timestamp_window * 2
            for key, seen in list(self._nonces.items()):
                if seen < horizon:
                    del self._nonces[key]

    # ------------------------------------------------------------------ HTTP

    def _answer(self, response: dict[str, Any], request_id: str) -> web.Response:
        response["RequestId"] = request_id
        if self.envelope == "sdk":
            error = response.get("Error")
            body: dict[str, Any] = {
                "code": 1 if error else 0,
                "msg": error["Message"] if error else "",
                "data": response,
            }
        else:
            body = {"Response": response}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _http(self, request: web.Request) -> web.Response:
        self.stats["http_requests"] += 1
        if self._slow > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._slow)
        request_id = ""
        try:
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                raise Reject(ERR_JSON, "请求格式不是 JSON") from None
            if not isinstance(body, dict):
                raise Reject(ERR_JSON, "请求格式不是 JSON")
            request_id = str(body.get("RequestId") or "")
            action = (
                body.get("Action") or request.match_info.get("tail") or request.query.get("cmd")
            )
            if not isinstance(action, str) or not action:
                raise Reject(ERR_MISSING, "Action")
            self.calls.append(action)
            if request.match_info["kind"] == tapi.APPAPI:
                response = self._appapi(action, body)
            else:
                response = await self._tokenapi(action, body)
        except Reject as rej:
            self.stats[f"error:{rej.code}"] += 1
            response = {"Error": {"Code": rej.code, "Message": rej.message}}
        return self._answer(response, request_id)

    def _check_signature(self, body: Mapping[str, Any]) -> None:
        for key in ("AppKey", "Timestamp", "Nonce", "Signature", "RequestId"):
            if body.get(key) in (None, ""):
                raise Reject(ERR_MISSING, f"缺少参数 {key}")
        if body["AppKey"] != self.app_key:
            raise Reject(ERR_APP, "应用未创建或是已删除")
        stamp, nonce = body["Timestamp"], body["Nonce"]
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            raise Reject(ERR_PARAM, "Timestamp 必须是整数")
        if not isinstance(nonce, int) or isinstance(nonce, bool) or nonce <= 0:
            raise Reject(ERR_PARAM, "Nonce 必须是正整数")
        if abs(time.time() - stamp) > self.timestamp_window:
            raise Reject(ERR_TIMESTAMP, "Timestamp 超出有效期")
        if not verify(self.app_secret, body):
            raise Reject(ERR_SIGNATURE, "签名错误")
        if (stamp, nonce) in self._nonces:
            raise Reject(ERR_NONCE, "Nonce 已使用")
        self._nonces[(stamp, nonce)] = time.time()

    def _appapi(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check_signature(body)
        if action != "AppGetTokenByWeiXin":
            raise Reject(ERR_ACTION, "Action 非法")
        open_id = body.get("WxOpenID")
        if not isinstance(open_id, str) or not open_id:
            raise Reject(ERR_MISSING, "WxOpenID")
        nick = body.get("NickName") or ""
        if not isinstance(nick, str) or len(nick) > 64:
            raise Reject("InvalidParameterValue.NickNameLengthInvalid", "昵称长度非法")
        if self._refuse_logins:
            if self._refuse_logins > 0:
                self._refuse_logins -= 1
            self.stats["logins_refused"] += 1
            raise Reject(ERR_LOGIN, "账号不存在")
        user = self.user_for(open_id, nick)
        user.nick = nick or user.nick  # AppGetTokenByWeiXin also updates the profile
        expires = time.time() + self.token_lifetime
        token = SimToken(secrets.token_hex(16), user.uid, expires)
        self.tokens[token.token] = token
        self.stats["logins"] += 1
        return {"Data": {"ExpireAt": math.ceil(expires), "Token": token.token}}

    def _user_of(self, access_token: object) -> SimUser:
        if not isinstance(access_token, str) or not access_token:
            raise Reject(ERR_TOKEN, "Token 无效")
        token = self.tokens.get(access_token)
        if token is None or token.expires <= time.time():
            raise Reject(ERR_TOKEN, "Token 无效")
        return self.users[token.uid]

    def _own_device(self, user: SimUser, body: Mapping[str, Any]) -> SimDevice:
        product, name = body.get("ProductId"), body.get("DeviceName")
        if not product or not name:
            raise Reject(ERR_MISSING, "ProductId/DeviceName")
        dev = self.devices.get(f"{product}/{name}")
        if dev is None or dev.owner != user.uid:
            raise Reject(ERR_DEVICE, "设备未创建或是已删除")
        return dev

    @staticmethod
    def _page(body: Mapping[str, Any]) -> tuple[int, int]:
        offset, limit = body.get("Offset", 0), body.get("Limit", 20)
        if (
            not isinstance(offset, int)
            or not isinstance(limit, int)
            or offset < 0
            or not 0 < limit <= tapi.MAX_LIMIT
        ):
            raise Reject(ERR_PARAM, f"Offset/Limit 非法 (Limit 最大值为{tapi.MAX_LIMIT})")
        return offset, limit

    async def _tokenapi(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        user = self._user_of(body.get("AccessToken"))
        handler = TOKENAPI.get(action)
        if handler is None:
            raise Reject(ERR_ACTION, "Action 非法")
        result: dict[str, Any] = handler(self, user, body)
        return result

    def _get_user(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "Data": {
                "UserID": user.uid,
                "NickName": user.nick,
                "Avatar": "",
                "WxOpenID": user.open_id,
            }
        }

    def _logout(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        self.tokens.pop(str(body.get("AccessToken")), None)
        return {}

    def _family_list(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        offset, limit = self._page(body)
        families = [{"FamilyId": user.family_id, "Name": f"{user.nick}的家", "Role": 1,
                     "CreateTime": 1570786578, "UpdateTime": 1570790807}]  # fmt: skip
        return {"FamilyList": families[offset : offset + limit], "Total": len(families)}

    def _device_list(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        if body.get("FamilyId") in (None, ""):
            raise Reject(ERR_MISSING, "FamilyId")
        if body["FamilyId"] != user.family_id:
            raise Reject(ERR_FAMILY, "操作该家庭无权限")
        offset, limit = self._page(body)
        rows = []
        for device in user.devices[offset : offset + limit]:
            dev = self.devices[device]
            rows.append({
                "ProductId": dev.product_id, "DeviceName": dev.name, "DeviceId": dev.device_id,
                "AliasName": dev.alias, "UserID": user.uid, "RoomId": "0", "IconUrl": "",
                "CreateTime": dev.created, "UpdateTime": dev.created,
            })  # fmt: skip
        return {"DeviceList": rows, "Total": len(user.devices)}

    def _statuses(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        out = []
        for device in required_list(body, "DeviceIds"):
            dev = self.devices.get(device) if isinstance(device, str) else None
            if dev is not None and dev.owner == user.uid:
                out.append({"DeviceId": dev.device_id, "ProductId": dev.product_id,
                            "DeviceName": dev.name, "Online": 0 if dev.online else 1})  # fmt: skip
        return {"DeviceStatuses": out}

    def _device_data(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        dev = self._own_device(user, body)
        data = {k: {"Value": v, "LastUpdate": dev.updated.get(k, 0)} for k, v in dev.values.items()}
        return {"Data": orjson.dumps(data).decode()}

    def _products(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        out = []
        for pid in required_list(body, "ProductIds"):
            if pid not in PRODUCTS:
                continue
            _, name, tpl, as_string = PRODUCTS[pid]
            if self.templates != "mixed":
                as_string = self.templates == "string"
            out.append({
                "ProductId": pid, "Name": name, "Description": "", "State": "",
                "DataTemplate": orjson.dumps(tpl).decode() if as_string else tpl,
                "AppTemplate": "", "NetType": "wifi", "CategoryId": int(tpl["profile"]["CategoryId"]),
                "ProductType": 0, "UpdateTime": 1600159203,
            })  # fmt: skip
        return {"Products": out}

    @staticmethod
    def _json_object(value: object, what: str) -> dict[str, Any]:
        if isinstance(value, Mapping):
            return dict(value)
        if not isinstance(value, str):
            raise Reject(ERR_MISSING, what)
        try:
            parsed = orjson.loads(value) if value else {}
        except orjson.JSONDecodeError:
            raise Reject(ERR_JSON, f"{what} 不是 JSON") from None
        if not isinstance(parsed, dict):
            raise Reject(ERR_JSON, f"{what} 不是 JSON 对象")
        return parsed

    def _control_device(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        dev = self._own_device(user, body)
        data = self._json_object(body.get("Data"), "Data")
        if not data:
            raise Reject(ERR_PARAM, "Data 为空")
        schema = dev.schema
        wire: dict[str, Any] = {}
        for key, value in data.items():
            prop = schema.prop(key)
            if prop is None:
                raise Reject(ERR_PARAM, f"属性 {key} 不存在")
            try:
                wire[key] = denormalize([prop], {key: validate(prop, value)})[key]
            except CommandError as exc:
                raise Reject(ERR_PARAM, exc.message) from None
        if not dev.online:
            raise Reject(ERR_OFFLINE, "设备处于离线状态")
        token = f"API-ControlDeviceData-{next(self._seq)}"
        self._push(dev, "Property", "Push", {"method": "control", "clientToken": token, "params": wire},
                   topic=f"$thing/down/property/{dev.product_id}/{dev.name}")  # fmt: skip
        self.stats["controls"] += 1
        self._spawn(self._apply_later(dev.device_id, wire, token))
        return {"Data": ""}

    async def _apply_later(self, device: str, wire: dict[str, Any], token: str) -> None:
        await asyncio.sleep(self.latency)
        self.report(device, wire, client_token=token)

    def _action(self, user: SimUser, body: Mapping[str, Any], *, sync: bool) -> dict[str, Any]:
        dev = self._own_device(user, body)
        action_id = body.get("ActionId")
        spec = dev.schema.action(action_id) if isinstance(action_id, str) else None
        if spec is None:
            raise Reject(ERR_PARAM, f"行为 {action_id} 不存在")
        inputs = self._json_object(body.get("InputParams", "{}"), "InputParams")
        by_id = {p.id: p for p in spec.input}
        for key, value in inputs.items():
            if key not in by_id:
                raise Reject(ERR_PARAM, f"输入参数 {key} 不存在")
            try:
                validate(by_id[key], value, writing=False)
            except CommandError as exc:
                raise Reject(ERR_PARAM, exc.message) from None
        if not dev.online:
            raise Reject(ERR_OFFLINE, "设备处于离线状态")
        client_token = f"{user.uid}::{body.get('RequestId') or next(self._seq)}"
        output = {"result": 1}
        self.stats["actions"] += 1
        if sync:
            return {
                "ClientToken": client_token,
                "OutputParams": orjson.dumps(output).decode(),
                "Status": "succ",
            }
        self._spawn(self._action_later(dev, spec.id, inputs, client_token, output))
        return {"ClientToken": client_token, "Status": "Sent"}

    async def _action_later(
        self,
        dev: SimDevice,
        action_id: str,
        inputs: dict[str, Any],
        client_token: str,
        output: dict[str, Any],
    ) -> None:
        self._push(dev, "Action", "Push", {"method": "action", "clientToken": client_token, "actionId": action_id,
                                           "timestamp": now_ms() // 1000, "params": inputs})  # fmt: skip
        await asyncio.sleep(self.latency)
        self._push(dev, "Action", "Report", {"method": "action_reply", "clientToken": client_token, "code": 0,
                                             "status": "succ", "response": output})  # fmt: skip


TOKENAPI: Final[dict[str, Any]] = {
    "AppGetUser": HttpApi._get_user,
    "AppLogoutUser": HttpApi._logout,
    "AppGetFamilyList": HttpApi._family_list,
    "AppGetFamilyDeviceList": HttpApi._device_list,
    "AppGetDeviceStatuses": HttpApi._statuses,
    "AppGetDeviceData": HttpApi._device_data,
    "AppGetProducts": HttpApi._products,
    "AppControlDeviceData": HttpApi._control_device,
    "AppCallDeviceActionSync": lambda self, user, body: self._action(user, body, sync=True),
    "AppCallDeviceActionAsync": lambda self, user, body: self._action(user, body, sync=False),
}
