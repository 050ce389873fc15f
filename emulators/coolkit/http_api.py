"""The CoolKit emulator's HTTP API (v2 and v1): signatures, sessions and their tokens, the
seed's rate rules, login/refresh, family, things, dispatch.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from websockets.exceptions import ConnectionClosed

from protocols.coolkit.rest import RATE_LIMITED
from protocols.coolkit.sign import canonical_query

from ..base import Reject
from .model import (
    REGIONS,
    SimDevice,
    SimSession,
    SimUser,
    Version,
)


class HttpApi:
    """The HTTP side of ``CoolkitCloud``.

    State it shares (set by ``CoolkitCloud.__init__``): ``_by_at``, ``_by_rt``,
    ``_last_call``, ``_window``, ``apps``, ``at_ttl``, ``calls``, ``conns``, ``devices``,
    ``groups``, ``host``, ``logins``, ``rate_max_calls``, ``rate_min_interval``,
    ``rate_window``, ``rt_ttl``, ``sessions``, ``users``, ``violations``, ``ws_port``. From
    the other concerns it calls ``push``.
    """


    def _new_session(self, user: SimUser, appid: str, version: Version) -> SimSession:
        now = time.monotonic()
        old = self.sessions.get((user.apikey, appid))
        if old is not None:
            old.valid = False
        sess = SimSession(user, appid, version, secrets.token_hex(20), secrets.token_hex(20),
                          now + self.at_ttl, now + self.rt_ttl)  # fmt: skip
        self.sessions[(user.apikey, appid)] = sess
        self._by_at[sess.at] = sess
        self._by_rt[sess.rt] = sess
        return sess

    async def _take_over(self, new: SimSession) -> None:
        for conn in list(self.conns):
            sess = conn.session
            if sess is not None and sess is not new and sess.user is new.user and sess.appid == new.appid:
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.send(orjson.dumps({"error": 406, "reason": "Authentication Failed",
                                                     "apikey": sess.user.apikey}).decode())  # fmt: skip
                    await conn.ws.close(1000, "logged in elsewhere")

    def _bearer(self, request: web.Request, region: str) -> SimSession:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise Reject(401, "missing access token")
        sess = self._by_at.get(auth[7:])
        if sess is None or not sess.valid or self.sessions.get((sess.user.apikey, sess.appid)) is not sess:
            raise Reject(401, "cannot found access token info")
        if sess.at_expires <= time.monotonic():
            raise Reject(402, "access token expired")
        if sess.user.region != region:
            raise Reject(401, f"token belongs to region {sess.user.region}")
        return sess


    # ------------------------------------------------------------------ rate rules

    def _rate(self, ip: str, endpoint: str) -> None:
        now = time.monotonic()
        self.calls.append((now, endpoint))
        last = self._last_call.get((ip, endpoint))
        self._last_call[(ip, endpoint)] = now
        window = self._window.setdefault(ip, deque())
        while window and window[0] <= now - self.rate_window:
            window.popleft()
        window.append(now)
        if last is not None and now - last < self.rate_min_interval:
            self.violations.append(f"{endpoint}: {now - last:.3f}s after the previous call")
            raise Reject(RATE_LIMITED, f"calls to {endpoint} must be {self.rate_min_interval:g}s apart")
        if len(window) > self.rate_max_calls:
            self.violations.append(f"{endpoint}: {len(window)} calls in {self.rate_window:g}s")
            raise Reject(RATE_LIMITED, f"more than {self.rate_max_calls} calls in {self.rate_window:g}s")

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        path = "/" + request.match_info["tail"]
        body = await request.read()
        version: Version = 1 if path.startswith("/api/") else 2
        if path == "/dispatch/app":
            version = 1 if request.method == "POST" else 2
        try:
            if region not in REGIONS:
                raise Reject(403, f"unknown region {region!r}")
            self._rate(request.remote or "?", f"{request.method} {path}")
            handler = ROUTES.get((request.method, path))
            if handler is None:
                raise Reject(403, "api not found")
            data = await handler(self, request, region, body)
        except Reject as rej:
            if version == 1:
                doc: dict[str, Any] = {"error": rej.code, "errmsg": rej.message, **rej.extra}
            else:
                doc = {"error": rej.code, "msg": rej.message, "data": rej.extra}
            return web.Response(body=orjson.dumps(doc), content_type="application/json")
        if version == 1 or path == "/dispatch/app":
            return web.Response(body=orjson.dumps({"error": 0, **data}), content_type="application/json")
        return web.Response(body=orjson.dumps({"error": 0, "msg": "", "data": data}), content_type="application/json")

    def _signed(self, request: web.Request, appid: str | None, message: bytes) -> None:
        signer = self.apps.get(appid or "")
        if signer is None:
            raise Reject(406, "appid is unauthorized")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Sign ") or not signer.verify(message, auth[5:]):
            raise Reject(406, "sign verification failed")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Reject(400, "body is not JSON") from None
        if not isinstance(doc, dict):
            raise Reject(400, "body is not an object")
        return doc

    def _login_user(self, doc: Mapping[str, Any], region: str, version: Version) -> SimUser:
        phone, email = doc.get("phoneNumber"), doc.get("email")
        password = doc.get("password")
        if not isinstance(password, str) or not (phone or email) or (version == 2 and not doc.get("countryCode")):
            raise Reject(400, "missing parameters")
        user = None
        for u in self.users.values():
            if (phone and u.phone == phone) or (not phone and email and u.email.lower() == str(email).lower()):
                user = u
        if user is None:
            raise Reject(10003 if version == 2 else 404, "user does not exist")
        if user.region != region:
            if version == 2:
                raise Reject(10004, "redirection", region=user.region)
            raise Reject(301, "user is in another region", region=user.region)
        if user.password != password:
            raise Reject(10001 if version == 2 else 401, "incorrect password")
        return user

    @staticmethod
    def _v1_fields(doc: Mapping[str, Any]) -> None:
        if not all(k in doc for k in ("appid", "nonce", "ts", "version")) or str(doc.get("version")) != "8":
            raise Reject(406, "incomplete parameters (appid, nonce, ts, version: 8)")

    async def _login_v2(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        self._signed(request, request.headers.get("X-CK-Appid"), body)
        user = self._login_user(self._json(body), region, 2)
        sess = self._new_session(user, request.headers["X-CK-Appid"], 2)
        self.logins.append(user.email)
        await self._take_over(sess)
        return {"user": user.record(), "at": sess.at, "rt": sess.rt, "region": user.region}

    async def _login_v1(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        doc = self._json(body)
        self._v1_fields(doc)
        self._signed(request, str(doc["appid"]), body)
        user = self._login_user(doc, region, 1)
        sess = self._new_session(user, str(doc["appid"]), 1)
        self.logins.append(user.email)
        await self._take_over(sess)
        return {"user": user.record(), "at": sess.at, "rt": sess.rt, "region": user.region}

    def _rotate(self, sess: SimSession) -> SimSession:
        """Refresh: a new ``at`` and a new ``rt`` (the ``rt`` rotates); sockets stay up."""
        sess.valid = False
        new = SimSession(sess.user, sess.appid, sess.version, secrets.token_hex(20), secrets.token_hex(20),
                         time.monotonic() + self.at_ttl, time.monotonic() + self.rt_ttl)  # fmt: skip
        self.sessions[(sess.user.apikey, sess.appid)] = new
        self._by_at[new.at] = new
        self._by_rt[new.rt] = new
        for conn in self.conns:
            if conn.session is sess:
                conn.session = new
        return new

    def _refresh_session(self, rt: Any, code: int) -> SimSession:
        sess = self._by_rt.get(rt) if isinstance(rt, str) else None
        if sess is None or not sess.valid or self.sessions.get((sess.user.apikey, sess.appid)) is not sess:
            raise Reject(code, "can't find the account with this rt!")
        if sess.rt_expires <= time.monotonic():
            raise Reject(code, "refresh token expired")
        return self._rotate(sess)

    async def _refresh_v2(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        if request.headers.get("Authorization", "").startswith("Sign "):
            self._signed(request, request.headers.get("X-CK-Appid"), body)
        else:
            self._bearer_any(request)
        new = self._refresh_session(self._json(body).get("rt"), 405)
        return {"at": new.at, "rt": new.rt}

    def _bearer_any(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        sess = self._by_at.get(auth[7:]) if auth.startswith("Bearer ") else None
        if sess is None:
            raise Reject(401, "missing or unknown token")

    async def _refresh_v1(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        self._v1_fields(query)
        if query.get("grantType") != "refresh":
            raise Reject(400, "grantType must be refresh")
        self._signed(request, query["appid"], canonical_query(query).encode())
        new = self._refresh_session(query.get("rt"), 402)
        return {"at": new.at, "rt": new.rt, "user": new.user.record(), "region": new.user.region}

    async def _family(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        sess = self._bearer(request, region)
        fid = sess.user.family_id
        return {"familyList": [{"id": fid, "apikey": sess.user.apikey, "name": "My Home", "index": 0,
                                "roomList": []}], "currentFamilyId": fid}  # fmt: skip

    def _visible(self, apikey: str) -> list[SimDevice]:
        return [d for d in self.devices.values() if d.owner == apikey or apikey in d.shared_to]

    def _device_record(self, dev: SimDevice, version: Version) -> dict[str, Any]:
        extra = {"uiid": dev.uiid, "model": dev.model or "PSF-B01-GL", "ui": "", "manufacturer": "emulated"}
        rec: dict[str, Any] = {
            "name": dev.name, "deviceid": dev.deviceid, "apikey": dev.owner, "online": dev.online,
            "params": dev.params, "devicekey": dev.devicekey, "productModel": dev.model, "brandName": "SONOFF",
            "tags": dev.tags,
        }  # fmt: skip
        if version == 1:
            rec["extra"] = {"extra": extra}
            rec["uiid"] = dev.uiid
        else:
            rec["extra"] = extra
        return rec

    async def _things(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        sess = self._bearer(request, region)
        me = sess.user.apikey
        items: list[dict[str, Any]] = []
        for dev in self._visible(me):
            item_type = 1 if dev.owner == me else 2
            rec = self._device_record(dev, 2)
            if item_type == 2:
                rec["sharedBy"] = {"apikey": dev.owner, "permit": 15}
            items.append({"itemType": item_type, "itemData": rec, "index": dev.index})
        for group in self.groups.values():
            if group.owner == me:
                data = {"id": group.id, "name": group.name, "mainDeviceId": group.members[0] if group.members else "",
                        "params": group.params, "family": {"familyid": sess.user.family_id, "index": group.index}}  # fmt: skip
                items.append({"itemType": 3, "itemData": data, "index": group.index})
        items.sort(key=lambda i: i["index"])
        try:
            num = int(request.query.get("num", 30))
            begin = int(request.query.get("beginIndex", -9999999))
        except ValueError:
            raise Reject(400, "num and beginIndex must be integers") from None
        if (num == 0 or num > 30) and len(items) > 30:
            raise Reject(500, "too much data: page with beginIndex")
        page = [i for i in items if i["index"] >= begin]
        if num:
            page = page[:num]
        return {"thingList": page, "total": len(items)}

    async def _group_status(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        sess = self._bearer(request, region)
        doc = self._json(body)
        params = doc.get("params")
        if doc.get("type") not in (1, 2) or not isinstance(doc.get("id"), str) or not isinstance(params, dict):
            raise Reject(400, "type, id and params are required")
        if doc["type"] == 2:
            group = self.groups.get(doc["id"])
            if group is None or group.owner != sess.user.apikey:
                raise Reject(405, "group not found")
            group.params.update(params)
            for did in group.members:
                dev = self.devices.get(did)
                if dev is not None and dev.online:  # offline members are skipped, as the seed says
                    await self.push(did, params)
            return {}
        dev = self.devices.get(doc["id"])
        if dev is None or dev not in self._visible(sess.user.apikey):
            raise Reject(405, "device not found")
        if not dev.online:
            raise Reject(4002, "device offline")
        await self.push(dev.deviceid, params)
        return {}

    async def _v1_devices(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        self._v1_fields(request.query)
        sess = self._bearer(request, region)
        return {"devicelist": [self._device_record(d, 1) for d in self._visible(sess.user.apikey)]}

    def _dispatch_reply(self) -> dict[str, Any]:
        return {"port": self.ws_port, "IP": self.host, "reason": "ok", "domain": self.host}

    async def _dispatch_v2(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        # EN seed: "Authorization parameter: Token"; the ZH docs say none, and the official client
        # sends none. A token that *is* sent must be valid.
        if request.headers.get("Authorization"):
            self._bearer(request, region)
        return self._dispatch_reply()

    async def _dispatch_v1(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        doc = self._json(body)
        self._v1_fields(doc)
        if doc.get("accept") != "ws":
            raise Reject(400, "accept must be ws")
        self._bearer(request, region)
        return self._dispatch_reply()


_Handler = Any
ROUTES: dict[tuple[str, str], _Handler] = {
    ("POST", "/v2/user/login"): HttpApi._login_v2,
    ("POST", "/v2/user/refresh"): HttpApi._refresh_v2,
    ("GET", "/v2/family"): HttpApi._family,
    ("GET", "/v2/device/thing"): HttpApi._things,
    ("POST", "/v2/device/thing/status"): HttpApi._group_status,
    ("GET", "/dispatch/app"): HttpApi._dispatch_v2,
    ("POST", "/dispatch/app"): HttpApi._dispatch_v1,
    ("POST", "/api/user/login"): HttpApi._login_v1,
    ("GET", "/api/user/refresh"): HttpApi._refresh_v1,
    ("GET", "/api/user/device"): HttpApi._v1_devices,
}
