"""The Aliyun emulator's push channel: the MQTT front (CONNECT checked, then spliced to a
private mosquitto), binds and unbinds, and the device pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.mqtt import codec
from protocols.aliyun import (
    down_topic,
    encode_push,
    parse_client_id,
    verify_credentials,
)

from .model import (
    SENSOR_PK,
    SimDevice,
    now_ms,
)

log = logging.getLogger("cloud2mqtt.sim.aliyun")


@dataclass(eq=False)
class Front:
    """One client connection through the MQTT front, spliced to mosquitto."""

    writer: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    identity: tuple[str, str] | None = None  # (productKey, deviceName)
    protocol: int = 4  # MQTT version of the client's CONNECT

    def close(self) -> None:
        # abort(), not close(): a dropped link is abrupt, and a TLS close would wait for a peer
        # that may never answer.
        for w in (self.writer, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()


def topic_allowed(topic: str, pk: str, dn: str) -> bool:
    return topic.startswith(f"/sys/{pk}/{dn}/")


def subscribe_filters(body: bytes, protocol: int) -> list[str]:
    pos = 2
    if protocol == 5:
        _, pos = codec.decode_props(body, pos)
    filters = []
    while pos < len(body):
        n = int.from_bytes(body[pos : pos + 2], "big")
        filters.append(body[pos + 2 : pos + 2 + n].decode("utf-8", "replace"))
        pos += 2 + n + 1
    return filters


class MqttChannel:
    """The MQTT side of ``AliyunCloud``.

    State it shares (set by ``AliyunCloud.__init__``): ``_captured``, ``_fronts``, ``_seq``,
    ``account``, ``app_devices``, ``bind_code``, ``binds``, ``broker``, ``client``, ``devices``,
    ``garble_count``, ``products``, ``push_after_bind``, ``refuse_all``, ``rng``, ``stats``. From
    the other concerns it calls ``emit_event`` and ``set_property``.
    """


    def _push(self, dev: SimDevice, suffix: str, method: str, params: dict[str, Any], key: str = "params") -> None:
        payload = encode_push(str(next(self._seq)), method, params, key)
        for (pk, dn), identity in list(self.binds.items()):
            if identity != dev.owner:
                continue
            out = payload
            if self.garble_count:
                self.garble_count -= 1
                out = b"\x00{garbled" + payload[:10]
            if self._captured is not None:
                self._captured.append((down_topic(pk, dn, suffix), out))
            elif self.client is not None:
                self.client.publish(down_topic(pk, dn, suffix), out, qos=1)
                self.stats["pushes"] += 1

    async def _drift(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            sensors = [d for d in self.devices.values() if d.product_key == SENSOR_PK and d.status == 1]
            if not sensors:
                continue
            dev = self.rng.choice(sensors)
            temp = round(float(dev.props["CurrentTemperature"]["value"]) + self.rng.uniform(-0.5, 0.5), 1)
            self.set_property(dev.iot_id, {"CurrentTemperature": temp})

    # ------------------------------------------------------------------ MQTT: bind / unbind

    def _on_up(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        parts = topic.split("/")
        # /sys/{pk}/{dn}/app/up/account/bind
        if len(parts) != 8:
            return
        pk, dn, action = parts[2], parts[3], parts[7]
        try:
            doc = orjson.loads(payload)
            msg_id = str(doc.get("id", ""))
        except (orjson.JSONDecodeError, AttributeError):
            return
        reply = down_topic(pk, dn, f"account/{action}_reply")
        if action == "unbind":
            self.stats["unbinds"] += 1
            self.binds.pop((pk, dn), None)
            self._publish(reply, {"id": msg_id, "code": 200, "message": "success"})
            return
        self.stats["binds"] += 1
        params = doc.get("params") if isinstance(doc.get("params"), dict) else {}
        token = params.get("iotToken")
        if self.bind_code is not None:
            code, message = self.bind_code, "bind refused"
            if code == 2152:
                message = "account is already active in another session"
            elif code == 2043:
                message = "check iotToken failed"
        elif token != self.account.iot_token or now_ms() > self.account.token_expires_ms:
            code, message = 2043, "check iotToken failed"
        else:
            code, message = 200, "success"
        if code == 200:
            self.binds[(pk, dn)] = self.account.identity_id
            self.stats["binds_ok"] += 1
        else:
            self.stats["binds_refused"] += 1
        body = {"id": msg_id, "code": code, "message": message}
        if not (code == 200 and self.push_after_bind and self._reply_then_push(pk, dn, reply, body)):
            self._publish(reply, body)

    def _reply_then_push(self, pk: str, dn: str, reply: str, body: dict[str, Any]) -> bool:
        """``push_after_bind``: write the bind reply, an event and a property report of the
        account's first device to the app's connection at once (QoS 0, one write). Written
        beside the splice from mosquitto: fine while nothing else is in flight to that app."""
        front = next((f for f in self._fronts if f.identity == (pk, dn)), None)
        dev = next((d for d in self.devices.values() if d.owner == self.account.identity_id), None)
        if front is None or dev is None:
            return False
        self._captured = captured = []
        try:
            event = self.products[dev.product_key]["events"][-1]
            self.emit_event(dev.iot_id, event["identifier"], {}, type=event["type"])
            name, item = next(iter(dev.props.items()))
            self.set_property(dev.iot_id, {name: item["value"]})
        finally:
            self._captured = None
        props = b"\x00" if front.protocol == 5 else None  # an empty MQTT 5 property block
        out = [codec.encode_publish(reply, orjson.dumps(body), props=props)]
        for topic, payload in captured:
            if topic.startswith(f"/sys/{pk}/{dn}/"):
                out.append(codec.encode_publish(topic, payload, props=props))
            elif self.client is not None:  # another app bound to the same account
                self.client.publish(topic, payload, qos=1)
        front.writer.write(b"".join(out))
        self.stats["pushes_after_bind"] += len(out) - 1
        return True

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        if self.client is not None:
            self.client.publish(topic, orjson.dumps(body), qos=1)

    # ------------------------------------------------------------------ MQTT: the front

    def _secret_for(self, pk: str, dn: str) -> str | None:
        return self.app_devices.get((pk, dn))

    async def _front(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        front = Front(writer)
        self._fronts.add(front)
        try:
            await self._front_session(front, reader, writer)
        except (OSError, asyncio.IncompleteReadError, codec.MqttProtocolError) as exc:
            log.debug("MQTT front connection ended: %s", exc)
        finally:
            self._fronts.discard(front)
            front.close()
            if front.identity is not None and not any(
                f.identity == front.identity for f in self._fronts
            ):
                # The platform forgets the binding of a connection that is gone.
                self.binds.pop(front.identity, None)

    async def _front_session(
        self, front: Front, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = codec.Parser(max_size=1 << 20)
        raw = bytearray()
        packets: list[codec.Packet] = []
        while not packets:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                return
            raw += chunk
            packets = parser.feed(chunk)
        ptype, _flags, body = packets[0]
        if ptype != codec.CONNECT:
            self.stats["connect_garbage"] += 1
            return
        connect = codec.decode_connect(body)
        protocol = connect.protocol if connect.protocol in (4, 5) else 4
        result: tuple[str, str] | int
        if self.refuse_all:
            result = 5
        else:
            result = verify_credentials(connect.client_id, connect.username, connect.password, self._secret_for)
        if isinstance(result, int):
            self.stats["connect_refused"] += 1
            rc = {4: 0x86, 5: 0x87}[result] if protocol == 5 else result
            writer.write(codec.encode_connack(rc, protocol))
            await writer.drain()
            log.info("MQTT CONNECT refused (rc %s) for client id %s", rc, parse_client_id(connect.client_id)[0])
            return
        front.identity = result
        front.protocol = protocol
        assert self.broker is not None
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        front.upstream = up_writer
        self.stats["connect_ok"] += 1
        up_writer.write(bytes(raw))
        # Packets after CONNECT in the same read are watched like all later ones.
        for ptype, flags, pbody in packets[1:]:
            if not self._allowed(result, ptype, flags, pbody, protocol):
                return
        down = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                for ptype, flags, pbody in parser.feed(chunk):
                    if not self._allowed(result, ptype, flags, pbody, protocol):
                        return
                up_writer.write(chunk)
                await up_writer.drain()
        finally:
            down.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await down

    def _allowed(self, ident: tuple[str, str], ptype: int, flags: int, body: bytes, protocol: int) -> bool:
        pk, dn = ident
        if ptype == codec.SUBSCRIBE:
            for topic in subscribe_filters(body, protocol):
                if not topic_allowed(topic, pk, dn):
                    self.stats["acl_refused"] += 1
                    log.info("MQTT SUBSCRIBE to %r refused for %s&%s", topic, dn, pk)
                    return False
        elif ptype == codec.PUBLISH:
            topic = codec.decode_publish(flags, body, protocol).topic
            if not topic_allowed(topic, pk, dn):
                self.stats["acl_refused"] += 1
                log.info("MQTT PUBLISH to %r refused for %s&%s", topic, dn, pk)
                return False
        return True

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

