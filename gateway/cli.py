"""``cloud2mqtt``: run, check-config, simulate, demo. uvloop is the event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from .errors import ConfigError

log = logging.getLogger("cloud2mqtt")


def _run(coro: Coroutine[Any, Any, int | None]) -> int | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows has none
        return asyncio.run(coro)
    return uvloop.run(coro)  # asyncio.run(loop_factory=…) needs Python 3.12


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass
    return stop


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        index, total = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard expects i/N, got {text!r}") from None
    if not 0 <= index < total:
        raise SystemExit(f"--shard {text}: need 0 <= i < N")
    return index, total


async def _cmd_run(args: argparse.Namespace) -> int:
    from .app import Gateway
    from .config import load_config

    config = load_config(args.config)
    _setup_logging(args.log_level or config.gateway.log_level)
    gateway = Gateway(config, shard=_parse_shard(args.shard))
    await gateway.run_until_stopped(_stop_event())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config)
    print(f"{args.config}: OK — MQTT {config.mqtt.url}, base topic {config.gateway.base_topic!r}")
    for account in config.accounts:
        flag = "" if account.enabled else " (disabled)"
        print(f"  account {account.vendor}/{account.name}{flag}")
    return 0


async def _cmd_simulate(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level or "info")
    from .vendors import emulator_module

    serve = emulator_module(args.vendor).serve(args)
    task = asyncio.ensure_future(serve)
    stop = _stop_event()
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
    stopper.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except OSError as exc:  # emulators.base.PortInUse names the port
        print(f"simulate {args.vendor}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _setup_logging(args.log_level or "warning")
    return await run_demo(args.vendors, args.broker, args.duration, args.devices, _stop_event())


def build_parser() -> argparse.ArgumentParser:
    from .vendors import VENDORS, emulator_module

    parser = argparse.ArgumentParser(prog="cloud2mqtt", description=__doc__)
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("-c", "--config", required=True, help="TOML configuration file")
    p.add_argument("--shard", help="run only accounts of shard i of N (i/N)")

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("config")

    p = sub.add_parser("simulate", help="run a vendor cloud emulator")
    vendors = p.add_subparsers(dest="vendor", required=True)
    for vendor in VENDORS:
        vp = vendors.add_parser(vendor, help=f"emulate the {vendor} cloud")
        try:
            emulator_module(vendor).add_arguments(vp)
        except ImportError as exc:  # a vendor emulator that is not installed
            vp.set_defaults(_unavailable=str(exc))

    p = sub.add_parser("demo", help="emulators + gateway + broker, with a summary per second")
    p.add_argument("--vendors", default="all", help="comma-separated vendors, or 'all'")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="broker to use; a private mosquitto is started when none listens there")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--devices", type=int, default=4, help="simulated devices per vendor")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(_cmd_run(args)) or 0
        if args.command == "check-config":
            return _cmd_check(args)
        if args.command == "simulate":
            if getattr(args, "_unavailable", None):
                print(f"emulator unavailable: {args._unavailable}", file=sys.stderr)
                return 2
            return _run(_cmd_simulate(args)) or 0
        if args.command == "demo":
            return _run(_cmd_demo(args)) or 0
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
