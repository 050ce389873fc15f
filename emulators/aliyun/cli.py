"""``cloud2mqtt simulate aliyun`` and the demo's Aliyun cloud.
"""

from __future__ import annotations

import argparse

from ..base import add_common_arguments, serve_forever
from .cloud import AliyunCloud, AliyunOptions


def demo_cloud(devices: int = 4) -> AliyunCloud:
    """The emulator as ``cloud2mqtt demo`` runs it: a sensor change every second, free ports."""
    return AliyunCloud(devices=devices, push_interval=1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091, help="HTTP API gateway port")
    parser.add_argument("--mqtt-port", type=int, default=0, help="MQTT front port (0: free port)")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--push-interval", type=float, default=5.0,
                        help="seconds between simulated sensor changes (0: none)")  # fmt: skip
    parser.add_argument("--token-lifetime", type=float, default=72000.0, help="iotToken lifetime, seconds")
    parser.add_argument("--seed", type=int, default=0)


async def serve(args: argparse.Namespace) -> None:
    cloud = AliyunCloud(AliyunOptions.from_args(args, push_interval=args.push_interval or None))
    await serve_forever(
        cloud,
        lambda: {
            **cloud.account_config(),
            "refresh_token": cloud.account.refresh_token,
            "identity_id": cloud.account.identity_id,
        },
        args=args,
        ports=(args.port, args.mqtt_port),
    )

