"""``cloud2mqtt simulate coolkit`` and the demo's CoolKit cloud.
"""

from __future__ import annotations

import argparse

from ..base import add_common_arguments, companion_port, serve_forever
from .cloud import CoolkitCloud, CoolkitOptions


def demo_cloud(devices: int = 8) -> CoolkitCloud:
    """The demo's cloud: the demo account's eight devices (+ ``devices - 8`` extra switches), a
    shared one and a group, with sensor and power readings pushed every few seconds."""
    return CoolkitCloud(push_interval=5.0, extra_devices=max(0, devices - 8))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091, help="HTTP port (every region under /{region})")
    parser.add_argument("--ws-port", type=int, default=None, help="WebSocket port (default: --port + 1)")
    parser.add_argument("--hb-interval", type=float, default=145.0, help="hbInterval handed out, seconds")
    parser.add_argument("--hb-grace", type=float, default=15.0, help="silence tolerated beyond hbInterval")
    parser.add_argument("--at-ttl", type=float, default=30 * 86400.0, help="access token lifetime, seconds")
    parser.add_argument("--rt-ttl", type=float, default=60 * 86400.0, help="refresh token lifetime, seconds")
    parser.add_argument("--rate-min-interval", type=float, default=0.5)
    parser.add_argument("--rate-window", type=float, default=300.0)
    parser.add_argument("--rate-max-calls", type=int, default=300)
    parser.add_argument("--user-online-interval", type=float, default=10.0)
    parser.add_argument("--push-interval", type=float, default=None, help="seconds between sensor pushes")
    parser.add_argument("--devices", type=int, default=0, help="extra single switches for the demo user")
    parser.add_argument("--seed", type=int, default=0)


async def serve(args: argparse.Namespace) -> None:
    ws_port = companion_port(args)
    cloud = CoolkitCloud(CoolkitOptions.from_args(args, ws_port=ws_port, extra_devices=args.devices))
    await serve_forever(cloud, cloud.account_config, args=args, ports=(args.port, ws_port))
