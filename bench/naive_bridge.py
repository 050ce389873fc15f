"""What a user would write instead: a naive Tencent WS push → MQTT bridge (the load bench's baseline).

``python -m bench.naive_bridge --api-url … --ws-url … --app-key … --app-secret … --users N
--mqtt-port P``

The straightforward stack, per the issue: ``websockets`` (``async for`` each message), stdlib
``json`` and ``base64``, the pure-Python TSL normalization, a dict merge per device, and
``await client.publish()`` on aiomqtt for every message, on the default asyncio loop. It logs in
and subscribes exactly like the gateway (the signing and request bodies come from
``protocols.tencent.api``: correctness is not what is compared), then does per message what the
gateway does: decode, normalize through the product's schema, merge, publish the retained state.
Run it with ``CLOUD2MQTT_PURE=1`` (``bench.load`` does) so nothing compiled is on its path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import time
import uuid
from typing import Any

import aiohttp
import aiomqtt
import websockets

from protocols.tencent import api
from protocols.tencent import ws as tws
from protocols.tencent.template import schema_from_template
from protocols.tsl import normalize_reference as normalize


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r:
        return api.parse_response(await r.read())


async def login(http: aiohttp.ClientSession, args: argparse.Namespace, open_id: str) -> tuple[str, dict[str, Any]]:
    body = api.appapi_body(
        "AppGetTokenByWeiXin", api.login_weixin_params(open_id), app_key=args.app_key,
        app_secret=args.app_secret, timestamp=int(time.time()), nonce=secrets.randbelow(2**30) + 1,
        request_id=uuid.uuid4().hex,
    )  # fmt: skip
    token = api.parse_token(await post(http, f"{args.api_url}/{api.APPAPI}", body)).token

    async def call(action: str, params: dict[str, Any]) -> dict[str, Any]:
        b = api.tokenapi_body(action, params, access_token=token, request_id=uuid.uuid4().hex)
        return await post(http, f"{args.api_url}/{api.TOKENAPI}", b)

    families = api.parse_family_list(await call("AppGetFamilyList", api.family_list_params())).items
    devices = []
    for fam in families:
        page = api.parse_device_list(
            await call("AppGetFamilyDeviceList", api.device_list_params(fam.family_id)), fam.family_id
        )
        devices.extend(page.items)
    products = api.parse_products(
        await call("AppGetProducts", api.products_params(sorted({d.product_id for d in devices})))
    )
    schemas = {d.device_id: schema_from_template(products[d.product_id].template) for d in devices}
    return token, schemas


async def connection(
    i: int, args: argparse.Namespace, http: aiohttp.ClientSession, mqtt: aiomqtt.Client,
    ready: asyncio.Queue[int],
) -> None:  # fmt: skip
    token, schemas = await login(http, args, f"bench-{i}")
    states: dict[str, dict[str, Any]] = {}
    async with websockets.connect(args.ws_url, compression=None, max_size=4 << 20) as conn:
        ids = list(schemas)
        await conn.send(tws.active_push_frame(f"ap-{i}", ids, token))

        async def heartbeat() -> None:
            while True:
                await conn.send(tws.heartbeat_frame(f"hb-{i}-{time.time_ns()}", ids, token))
                await asyncio.sleep(50)

        beat = asyncio.create_task(heartbeat())
        try:
            async for message in conn:
                frame = json.loads(message)
                if not frame.get("push"):
                    if frame.get("reqId") == f"ap-{i}":
                        await ready.put(i)
                    continue
                params = frame["params"]
                if params.get("SubType") not in ("Report", "Push") or not params.get("Payload"):
                    continue
                body = json.loads(base64.b64decode(params["Payload"]).replace(b"\x00", b""))
                if body.get("method") != "report":
                    continue
                device = params["DeviceId"]
                values, _flagged = normalize(schemas[device], body["params"])
                state = states.setdefault(device, {})
                state.update(values)
                state["last_seen"] = body.get("timestamp") or int(time.time() * 1000)
                topic = "cloud2mqtt/tencent/" + device.replace("%", "%25").replace("/", "%2F")
                await mqtt.publish(topic, json.dumps(state), qos=0, retain=True)
        finally:
            beat.cancel()


async def main_async(args: argparse.Namespace) -> None:
    ready: asyncio.Queue[int] = asyncio.Queue()
    async with aiohttp.ClientSession() as http, aiomqtt.Client(
        "127.0.0.1", args.mqtt_port, identifier=f"naive-{time.time_ns()}"
    ) as mqtt:
        tasks = [asyncio.create_task(connection(i, args, http, mqtt, ready)) for i in range(args.users)]
        for _ in range(args.users):
            await ready.get()
        print(f"READY {args.users}/{args.users}", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            print(json.dumps({"online": sum(not t.done() for t in tasks)}), flush=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--api-url", required=True)
    p.add_argument("--ws-url", required=True)
    p.add_argument("--app-key", required=True)
    p.add_argument("--app-secret", required=True)
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--mqtt-port", type=int, required=True)
    asyncio.run(main_async(p.parse_args()))  # the default loop, on purpose


if __name__ == "__main__":
    main()
