"""What every emulator shares (emulators/base.py): ``serve`` fails loudly on a taken port, and
``--print-config`` prints a ``[[accounts]]`` block that TOML reads back as the JSON line."""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import tomllib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from emulators.base import PortInUse, toml_accounts_block
from gateway.vendors import VENDORS, emulator_module

# keep the emulators quiet and light: no random pushes
_QUIET = {"tencent": ["--rate", "0"], "coolkit": [], "aliyun": ["--push-interval", "0"], "xky": []}


def _args(vendor: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    emulator_module(vendor).add_arguments(parser)
    return parser.parse_args([*argv, *_QUIET[vendor]])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other socket listens on (bound to port 0, so it is really ours)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_every_vendor_has_an_emulator_with_the_shared_options():
    for vendor in VENDORS:
        args = _args(vendor, "--print-config")
        assert args.print_config is True
        module = emulator_module(vendor)
        assert callable(module.serve) and callable(module.demo_cloud)


def test_every_fault_names_a_method_of_its_cloud() -> None:
    """``POST /_control/<fault>`` calls the method ``FAULTS`` names: a misspelt one would only
    show as a 500 when some test or tool first asks for that fault."""
    for vendor in VENDORS:
        cloud = emulator_module(vendor).demo_cloud()
        assert cloud.FAULTS, vendor
        for fault, method in cloud.FAULTS.items():
            assert callable(getattr(cloud, method, None)), f"{vendor}: {fault} -> {method}"


@pytest.mark.parametrize("vendor", list(VENDORS))
async def test_serve_raises_port_in_use_naming_the_port(vendor: str, taken_port: int) -> None:
    serve = emulator_module(vendor).serve
    with pytest.raises(PortInUse) as err:
        await asyncio.wait_for(serve(_args(vendor, "--port", str(taken_port))), 60)
    assert err.value.port == taken_port and err.value.errno == errno.EADDRINUSE
    assert isinstance(err.value, OSError)
    assert f"port {taken_port} on 127.0.0.1 is already in use" in str(err.value)


@pytest.mark.parametrize("vendor", ["tencent", "coolkit"])
async def test_a_taken_websocket_port_is_named_too(vendor: str, taken_port: int) -> None:
    serve = emulator_module(vendor).serve
    with pytest.raises(PortInUse) as err:
        await asyncio.wait_for(serve(_args(vendor, "--port", "0", "--ws-port", str(taken_port))), 60)
    assert err.value.port == taken_port


@pytest.mark.parametrize("vendor", list(VENDORS))
async def test_print_config_prints_a_toml_accounts_block(
    vendor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    task = asyncio.create_task(emulator_module(vendor).serve(_args(vendor, "--port", "0", "--print-config")))
    out = ""
    try:
        async with asyncio.timeout(60):
            while "[[accounts]]" not in out:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.02)
                out += capsys.readouterr().out
            while not out.endswith("\n"):
                await asyncio.sleep(0.02)
                out += capsys.readouterr().out
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    first, rest = out.split("\n", 1)
    account = orjson.loads(first)  # the JSON line stays first, for the tools that read it
    assert rest.startswith("[[accounts]]\n")
    parsed = tomllib.loads(rest)
    assert parsed == {"accounts": [{k: v for k, v in account.items() if v is not None}]}
    assert parsed["accounts"][0]["vendor"] == vendor


def test_toml_block_round_trips_awkward_values() -> None:
    account: dict[str, Any] = {
        "vendor": "tencent",
        "name": 'a "quoted" \\ name\twith\ncontrol \x01 and 设备 🙂',
        "port": 8091,
        "ratio": 0.5,
        "enabled": False,
        "regions": ["eu", "us"],
        "nested": {"a b": 1, "ok": True},
        "skipped": None,
        "dotted.key": "x",
    }
    parsed = tomllib.loads(toml_accounts_block(account))
    expected = {k: v for k, v in account.items() if v is not None}
    assert parsed == {"accounts": [expected]}
