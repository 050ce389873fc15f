"""A scripted in-process vendor for testing the gateway core (topic tree, commands, state rules)
without any vendor protocol. Vendor connectors are tested against their emulators instead."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from gateway.connectors.base import Connector
from gateway.link import LinkState
from protocols.model import (
    ActionSpec,
    CommandResult,
    DeviceInfo,
    Property,
    Schema,
    StateChange,
    VendorError,
)

SCHEMA = Schema(
    properties=(
        Property("power", "Power", "bool"),
        Property("brightness", "Brightness", "int", min=0, max=100, unit="%"),
        Property("temperature", "Temperature", "float", access="r", unit="°C"),
        Property("set", "A property named like a sub-topic", "int"),
    ),
    actions=(ActionSpec("blink", "Blink", input=(Property("times", type="int", min=1, max=5),)),),
)

INSTANCES: dict[str, DummyConnector] = {}


class DummyConnector(Connector):
    vendor = "dummy"

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
        return dict(raw)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[tuple[str, Any]] = []
        self.hang = False
        self.close_hangs = False  # close() never returns (a vendor logout that hangs)
        self.fail: VendorError | None = None
        INSTANCES[self.ctx.account] = self

    def infos(self, names: list[str]) -> list[DeviceInfo]:
        return [DeviceInfo(n, f"Lamp {n}", "L1", SCHEMA, online=True) for n in names]

    async def run(self) -> None:
        self.ctx.link(LinkState.CONNECTING)
        self.ctx.devices(self.infos(self.options.get("devices", ["lamp/1", "lamp-2"])))
        self.ctx.link(LinkState.ONLINE)
        await asyncio.Event().wait()

    async def close(self) -> None:
        if self.close_hangs:
            await asyncio.Event().wait()

    async def set(self, device: str, props: dict[str, Any]) -> CommandResult:
        self.calls.append(("set", (device, props)))
        if self.hang:
            await asyncio.Event().wait()
        if self.fail:
            raise self.fail
        self.ctx.state(StateChange(device, props, 2_000_000_000_000))
        return CommandResult.ok()

    async def action(self, device: str, action: str, params: dict[str, Any]) -> CommandResult:
        self.calls.append(("action", (device, action, params)))
        return CommandResult.ok({"done": True})
