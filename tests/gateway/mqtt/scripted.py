"""A scripted asyncio MQTT peer, for the protocol corners mosquitto cannot be made to produce
(a refused version, a malformed CONNACK, silence). Shared by the MQTT client tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.mqtt import codec
from gateway.mqtt.client import MqttClient

#: answers one CONNECT: ``(connect, reader, writer)``; the socket is closed after it returns
Answer = Callable[[codec.Connect, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def scripted(handler: Callable[..., Any]) -> tuple[asyncio.Server, int]:
    """A server on a free local port running ``handler(reader, writer)`` per connection."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_connect(reader: asyncio.StreamReader) -> codec.Connect | None:
    """The connection's CONNECT, or ``None`` when it closes first."""
    parser = codec.Parser()
    while True:
        data = await reader.read(4096)
        if not data:
            return None
        for ptype, _, body in parser.feed(data):
            if ptype == codec.CONNECT:
                return codec.decode_connect(body)


async def answering(answer: Answer) -> tuple[asyncio.Server, int, list[int]]:
    """A scripted peer that reads each CONNECT, records its protocol level (the list returned,
    in order) and lets ``answer`` reply; then closes the connection."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = await read_connect(reader)
        assert c is not None
        seen.append(c.protocol)
        await answer(c, reader, writer)
        writer.close()

    server, port = await scripted(handle)
    return server, port, seen


async def assert_falls_back_to_311(answer: Answer, client_id: str) -> None:
    """Against a peer answering with ``answer``, the client tries MQTT 5, then settles on 3.1.1."""
    server, port, seen = await answering(answer)
    client = MqttClient("127.0.0.1", port, client_id=client_id, reconnect=False)
    await client.connect()
    assert client.protocol == 4 and seen == [5, 4]
    await client.disconnect()
    server.close()
