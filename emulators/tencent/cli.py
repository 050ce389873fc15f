"""``cloud2mqtt simulate tencent`` and the demo's Tencent cloud."""

from __future__ import annotations

import argparse
from typing import Any

from ..base import add_common_arguments, companion_port, serve_forever
from .cloud import TencentCloud, TencentOptions
from .model import REPORT_TIMESTAMPS, TEMPLATE_FORMS

# ---------------------------------------------------------------------- demo and CLI


def demo_cloud(devices: int = 4) -> TencentCloud:
    """The emulator as ``cloud2mqtt demo`` runs it: a push every second, ports picked freely."""
    return TencentCloud(devices=devices, rate=1.0)


def account_config(cloud: TencentCloud, name: str = "demo", **overrides: Any) -> dict[str, Any]:
    return cloud.account_config(name, **overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091, help="HTTP (appapi/tokenapi) port")
    parser.add_argument(
        "--ws-port", type=int, default=None, help="WebSocket port (default: --port + 1)"
    )
    parser.add_argument("--app-key", default="c2m-demo-appkey")
    parser.add_argument("--app-secret", default="c2m-demo-appsecret")
    parser.add_argument("--open-id", default="c2m-demo-user", help="WxOpenID of the default user")
    parser.add_argument("--devices", type=int, default=4, help="devices per user")
    parser.add_argument(
        "--token-lifetime", type=float, default=7200.0, help="AccessToken lifetime, seconds"
    )
    parser.add_argument(
        "--timestamp-window", type=float, default=300.0, help="accepted appapi clock skew, seconds"
    )
    parser.add_argument("--trace-timeout", type=float, default=90.0,
                        help="stop pushing a device whose trace heartbeat is older (seconds)")  # fmt: skip
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=180.0,
        help="close a socket silent this long (seconds)",
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, help="random pushes per second per user (0: none)"
    )
    parser.add_argument(
        "--max-rate", action="store_true", help="send reports as fast as each socket drains"
    )
    parser.add_argument(
        "--latency", type=float, default=0.02, help="device reaction time to a control, seconds"
    )
    parser.add_argument("--envelope", choices=["response", "sdk"], default="response",
                        help="HTTP reply envelope: the seed's Response or the JS SDK's code/msg/data")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-timestamps", choices=REPORT_TIMESTAMPS, default="s",
                        help="device message timestamps: seconds (seed 002), 0, or ms")  # fmt: skip
    parser.add_argument("--templates", choices=TEMPLATE_FORMS, default="mixed",
                        help="DataTemplate as an object, a JSON string, or one of each")  # fmt: skip
    parser.add_argument("--nul-pad", type=int, default=0,
                        help="NUL bytes appended to every device message (0: none)")  # fmt: skip


async def serve(args: argparse.Namespace) -> None:
    ws_port = companion_port(args)
    cloud = TencentCloud(TencentOptions.from_args(args, ws_port=ws_port))
    await serve_forever(cloud, cloud.account_config, args=args, ports=(args.port, ws_port))
