"""The XiakeCloud emulator over real HTTP, spoken to with the shared codec."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from emulators.xky import XkyCloud
from protocols.model import RemoteProtocolError, VendorError
from protocols.xky import api, records
from protocols.xky.envelope import SessionInvalid, parse_response
from tests.helpers import eventually


@pytest.fixture
async def cloud() -> AsyncIterator[XkyCloud]:
    async with XkyCloud(devices=3, nodes=2) as c:
        yield c


async def call(http: aiohttp.ClientSession, cloud: XkyCloud, req: api.Request) -> Any:
    async with http.request(
        req.method,
        req.url(cloud.url),
        params=req.query,
        data=req.body,
        headers={"content-type": "application/json"} if req.body is not None else None,
    ) as resp:
        return parse_response(resp.status, await resp.read())


async def login(
    http: aiohttp.ClientSession, cloud: XkyCloud, sub: str = "", pw: str | None = None
) -> str:
    data = await call(http, cloud, api.login(cloud.account, pw or cloud.password, subaccount=sub))
    return records.parse_login(data).session


async def test_login_device_list_and_get_device(
    cloud: XkyCloud, http: aiohttp.ClientSession
) -> None:
    session = await login(http, cloud)
    devices = records.parse_device_list(await call(http, cloud, api.get_device_list(session)))
    assert sorted(d.sn for d in devices) == sorted(cloud.devices)
    assert all(d.online is True and d.node in cloud.nodes for d in devices)
    sn = devices[0].sn
    one = await call(http, cloud, api.get_device(session, sn))
    assert records.parse_device(one).sn == sn
    assert "connection" in one  # seed: "including connection information"
    user = records.parse_user(await call(http, cloud, api.get_user(session)))
    assert user["account"] == cloud.account
    temp = records.parse_temp_session(await call(http, cloud, api.get_temp_session(session)))
    assert records.parse_device_list(await call(http, cloud, api.get_device_list(temp)))
    # the GET really went as a query, the POST as JSON
    calls = {c.path: c for c in cloud.calls}
    assert calls["/get_device"].method == "GET" and calls["/get_device"].args["source"] is True
    assert calls["/login"].method == "POST" and calls["/login"].args["password"] == "***"


async def test_bad_login_and_wrong_method(cloud: XkyCloud, http: aiohttp.ClientSession) -> None:
    with pytest.raises(VendorError) as exc:
        await login(http, cloud, pw="wrong")
    assert exc.value.code == "auth" and not isinstance(exc.value, SessionInvalid)
    with pytest.raises(VendorError) as exc:
        await call(http, cloud, api.login(cloud.account, cloud.password, key="nope"))
    assert exc.value.code == "auth"
    async with http.post(
        cloud.url + "/get_device_list", json={"session": "x", "source": True}
    ) as r:
        with pytest.raises(VendorError) as exc:
            parse_response(r.status, await r.read())
    assert exc.value.vendor_code == 405


async def test_sessions_are_checked_expire_and_log_out(http: aiohttp.ClientSession) -> None:
    async with XkyCloud(session_ttl=0.2) as cloud:
        with pytest.raises(SessionInvalid):
            await call(http, cloud, api.get_device_list("not-a-session"))
        session = await login(http, cloud)
        await call(http, cloud, api.get_device_list(session))

        async def expired() -> bool:
            try:
                await call(http, cloud, api.get_device_list(session))
            except SessionInvalid:
                return True
            return False

        await eventually(expired, "the session expired after session_ttl")
        session = await login(http, cloud)
        cloud.expire_sessions()
        with pytest.raises(SessionInvalid):
            await call(http, cloud, api.get_user(session))
        session = await login(http, cloud)
        await call(http, cloud, api.logout(session))
        with pytest.raises(SessionInvalid):
            await call(http, cloud, api.get_user(session))


async def test_without_source_the_result_stays_encrypted(
    cloud: XkyCloud, http: aiohttp.ClientSession
) -> None:
    session = await login(http, cloud)
    async with http.get(cloud.url + "/get_device_list", params={"session": session}) as r:
        data = parse_response(r.status, await r.read())
    assert isinstance(data, str)
    assert orjson.loads(base64.b64decode(data))[0]["sn"] in cloud.devices


async def test_set_device_and_multi_device(cloud: XkyCloud, http: aiohttp.ClientSession) -> None:
    session = await login(http, cloud)
    sn = next(iter(cloud.devices))
    await call(http, cloud, api.set_device(session, sn, name="phone", desc="desk", tags=["a", "b"]))
    rec = records.parse_device(await call(http, cloud, api.get_device(session, sn)))
    assert (rec.name, rec.desc, rec.tags) == ("phone", "desk", ("a", "b"))
    await call(http, cloud, api.set_device(session, sn, desc="only desc"))
    assert cloud.devices[sn].name == "phone" and cloud.devices[sn].desc == "only desc"
    with pytest.raises(VendorError) as exc:
        await call(http, cloud, api.set_device(session, "missing", name="x"))
    assert exc.value.code == "invalid"
    sns = list(cloud.devices)[:2]
    await call(http, cloud, api.set_multi_device(session, sns))
    assert records.parse_multi_device(await call(http, cloud, api.get_multi_device(session))) == sns
    with pytest.raises(VendorError):
        await call(http, cloud, api.set_multi_device(session, ["missing"]))


async def test_sub_accounts_see_only_their_devices(
    cloud: XkyCloud, http: aiohttp.ClientSession
) -> None:
    main = await login(http, cloud)
    added = await call(http, cloud, api.add_subaccount(main, "helper", "helper-pw", "remarks"))
    sub_id = str(added["id"])
    subs = records.parse_subaccount_list(await call(http, cloud, api.get_subaccount_list(main)))
    assert "helper" in [s.account for s in subs]
    sns = list(cloud.devices)
    await call(http, cloud, api.set_subaccount(main, sub_id, devices=sns[1:]))
    sub = records.parse_subaccount(await call(http, cloud, api.get_subaccount(main, sub_id)))
    assert sub.devices == tuple(sns[1:]) and sub.description == "remarks"
    sub_session = await login(http, cloud, sub="helper", pw="helper-pw")
    seen = records.parse_device_list(await call(http, cloud, api.get_device_list(sub_session)))
    assert [d.sn for d in seen] == sns[1:]
    with pytest.raises(VendorError) as exc:
        await call(http, cloud, api.set_device(sub_session, sns[0], name="not mine"))
    assert exc.value.code == "rejected"
    with pytest.raises(VendorError):
        await call(http, cloud, api.get_subaccount_list(sub_session))
    await call(http, cloud, api.delete_subaccount(main, sub_id))
    with pytest.raises(SessionInvalid):
        await call(http, cloud, api.get_device_list(sub_session))


async def test_node_servers(cloud: XkyCloud, http: aiohttp.ClientSession) -> None:
    session = await login(http, cloud)
    added = await call(http, cloud, api.add_node(session, "1" * 32, "new node"))
    nodes = records.parse_node_list(await call(http, cloud, api.get_node_list(session)))
    assert len(nodes) == 3 and nodes[-1].name == "new node"
    await call(http, cloud, api.set_node(session, str(added["id"]), "renamed"))
    first = nodes[0].id
    await call(http, cloud, api.del_node(session, first))
    devices = records.parse_device_list(await call(http, cloud, api.get_device_list(session)))
    assert all(d.node != first for d in devices)
    assert "renamed" in [
        n.name for n in records.parse_node_list(await call(http, cloud, api.get_node_list(session)))
    ]


async def test_devices_come_and_go(cloud: XkyCloud, http: aiohttp.ClientSession) -> None:
    session = await login(http, cloud)
    before = records.snapshot(
        records.parse_device_list(await call(http, cloud, api.get_device_list(session)))
    )
    gone = next(iter(cloud.devices))
    cloud.remove_device(gone)
    new = cloud.add_device("abcd0001", name="fresh", online=False)
    changed = next(sn for sn in cloud.devices if sn != new)
    cloud.set_online(changed, False)
    now = records.parse_device_list(await call(http, cloud, api.get_device_list(session)))
    changes = records.diff(before, now)
    assert [r.sn for r in changes.added] == [new]
    assert changes.removed == (gone,)
    assert [r.sn for r in changes.availability] == [changed]


async def test_background_change_and_churn(http: aiohttp.ClientSession) -> None:
    async with XkyCloud(devices=2, change_interval=0.01, churn_interval=0.01, seed=3) as cloud:
        session = await login(http, cloud)
        first = records.parse_device_list(await call(http, cloud, api.get_device_list(session)))
        for _ in range(200):
            await asyncio.sleep(0.02)
            now = records.parse_device_list(await call(http, cloud, api.get_device_list(session)))
            if not records.diff(records.snapshot(first), now).empty:
                break
        else:
            pytest.fail("the emulated devices never changed")


async def test_faults_in_process(cloud: XkyCloud, http: aiohttp.ClientSession) -> None:
    session = await login(http, cloud)
    cloud.fail(status=503, path="/get_device_list")
    with pytest.raises(VendorError) as exc:
        await call(http, cloud, api.get_device_list(session))
    assert exc.value.vendor_code == "http 503"
    for kind in ("garble", "shape", "record"):
        cloud.malformed(kind=kind, path="/get_device_list")
        with pytest.raises(RemoteProtocolError):
            records.parse_device_list(await call(http, cloud, api.get_device_list(session)))
    cloud.slow(0.05, path="/get_device_list")
    assert records.parse_device_list(await call(http, cloud, api.get_device_list(session)))
    cloud.slow(5, path="/get_device_list")
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.1):
            await call(http, cloud, api.get_device_list(session))
    cloud.malformed(count=5)
    cloud.reset()
    assert records.parse_device_list(await call(http, cloud, api.get_device_list(session)))


async def test_faults_over_the_control_endpoint(
    cloud: XkyCloud, http: aiohttp.ClientSession
) -> None:
    session = await login(http, cloud)

    async def control(fault: str, **params: Any) -> dict[str, Any]:
        async with http.post(f"{cloud.url}/_control/{fault}", json=params) as r:
            out: dict[str, Any] = await r.json()
            return out

    assert (await control("malformed", kind="garble", path="/get_device_list"))["ok"]
    with pytest.raises(RemoteProtocolError):
        await call(http, cloud, api.get_device_list(session))
    await control("fail", status=500)
    with pytest.raises(VendorError):
        await call(http, cloud, api.get_user(session))
    await control("expire_sessions")
    with pytest.raises(SessionInvalid):
        await call(http, cloud, api.get_user(session))
    session = await login(http, cloud)
    sn = (await control("add_device", sn="feed0001", name="via control"))["result"]
    await control("update_device", sn=sn, desc="remote")
    await control("set_online", sn=sn, online=False)
    rec = records.parse_device(await call(http, cloud, api.get_device(session, sn)))
    assert (rec.name, rec.desc, rec.online) == ("via control", "remote", False)
    await control("remove_device", sn=sn)
    assert sn not in cloud.devices
    assert not (await control("nope"))["ok"]
    assert not (await control("fail", bogus=1))["ok"]


async def test_account_config_points_at_the_emulator(cloud: XkyCloud) -> None:
    cfg = cloud.account_config("home", poll_interval=1)
    assert cfg["vendor"] == "xky" and cfg["name"] == "home"
    assert cfg["base_url"] == cloud.url and cfg["poll_interval"] == 1
