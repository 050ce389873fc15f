"""The ``cloud2mqtt`` command: run, check-config, simulate, demo. uvloop is the event loop.

Building the parser imports nothing heavy: no connector, no emulator, no aiohttp or websockets,
so ``--help`` answers at once. ``simulate VENDOR …`` imports that one vendor's emulator and
hands it the rest of the command line (``add_arguments(parser)``, then ``async serve(args)``).

Errors a user causes (a missing or broken file, a port in use, a broker that refuses) end in one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .vendors import VENDORS, emulator_module

if TYPE_CHECKING:
    import asyncio

    from .config import AccountConfig, Config

__all__ = ["build_parser", "check_connect", "main", "simulate_parser"]

log = logging.getLogger("cloud2mqtt")

PROG = "cloud2mqtt"
LOG_LEVELS = ("debug", "info", "warning", "error")
DESCRIPTION = (
    "Bridge vendor IoT clouds (" + ", ".join(v.title for v in VENDORS.values()) + ") onto one "
    "MQTT topic tree."
)
EPILOG = (
    f"Start with '{PROG} demo' (everything on this machine), then write a configuration, check "
    f"it with '{PROG} check-config FILE' and run it with '{PROG} run -c FILE'. "
    f"'{PROG} COMMAND --help' shows a command's options."
)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, False) or isinstance(
            action, _Version | argparse._HelpAction
        ):
            return action.help
        return super()._get_help_string(action)


def _fill_help(parser: argparse.ArgumentParser) -> None:
    # An emulator option without help would show no default either: name it at least.
    for action in parser._actions:
        if not action.help and action.option_strings:
            action.help = action.dest.replace("_", " ")


class UserError(Exception):
    """A problem the user can fix; ``main`` prints it as one line and exits ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        import tomllib
        from pathlib import Path

        try:
            pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
            return str(tomllib.loads(pyproject.read_text("utf-8"))["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _run(coro: Coroutine[Any, Any, int | None]) -> int | None:
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows has none
        return asyncio.run(coro)
    return uvloop.run(coro)  # asyncio.run(loop_factory=…) needs Python 3.12


def _setup_logging(level: str) -> None:
    # %(asctime)s is local time, "2026-11-30 12:14:11,023": readable, never epoch ms.
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def _stop_event() -> asyncio.Event:
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s received, shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass
    return stop


# ------------------------------------------------------------------------------------ commands


async def _cmd_run(args: argparse.Namespace) -> int:
    from .config import ensure_state_dir, load_config

    config = load_config(args.config)
    _setup_logging(args.log_level or config.gateway.log_level)
    for warning in config.warnings:
        log.warning("%s: %s", args.config, warning)
    ensure_state_dir(config.gateway.state_dir)
    from .app import Gateway
    from .presence import InstanceConflict

    gateway = Gateway(config)
    try:
        await gateway.run_until_stopped(_stop_event())
    except InstanceConflict as exc:
        raise UserError(f"{PROG} run: {exc}", 2) from None
    log.info("cloud2mqtt stopped")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config, state_dir=True)
    print(f"{args.config}: OK — MQTT {config.mqtt.url}, base topic {config.gateway.base_topic!r}")
    for account in config.accounts:
        flag = "" if account.enabled else " (disabled)"
        print(f"  account {account.vendor}/{account.name}{flag}")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    if not args.connect:
        return 0
    _setup_logging(args.log_level or "warning")
    return _run(check_connect(config, timeout=args.timeout)) or 0


class _Version(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata costs 40 ms)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        print(f"{PROG} {_version()}")
        parser.exit()


async def check_connect(config: Config, *, timeout: float = 10.0) -> int:
    """``check-config --connect``: one MQTT CONNECT, one login per enabled account.

    Prints one line per check; returns 0 when every check that could run passed, else 1.
    A connector takes part through an optional hook on its class::

        @classmethod
        async def check_login(cls, options, *, timeout: float) -> str | None

    It logs in once with the parsed ``options`` (persisting nothing), returns a short note for
    the report ("3 devices") or ``None``, and raises on failure (the message is printed).
    A connector without it is reported as "login check not available".
    """
    failed = not await _check_broker(config, timeout)
    for account in config.accounts:
        if not account.enabled:
            print(f"  account {account.vendor}/{account.name}: skipped (disabled)")
            continue
        failed |= not await _check_account(account, timeout)
    return 1 if failed else 0


async def _check_broker(config: Config, timeout: float) -> bool:
    import asyncio

    from .mqtt.client import MqttClient

    m = config.mqtt
    # A client id of its own: the gateway's would take the session of a running gateway.
    client = MqttClient(
        m.host, m.port, client_id=f"{m.client_id}-check"[:23], username=m.username,
        password=m.password, ssl=m.ssl_context(), server_hostname=m.host,
        keepalive=m.keepalive, protocol=m.protocol, reconnect=False, connect_timeout=timeout,
    )  # fmt: skip
    try:
        await asyncio.wait_for(client.connect(), timeout + 1)
    except (OSError, TimeoutError) as exc:  # ConnectRefused is a ConnectionError
        hint = ""
        if getattr(exc, "auth", False):
            hint = " (check mqtt.username / mqtt.password)"
        print(f"  broker {m.url}: FAILED — {_reason(exc)}{hint}")
        return False
    version = "5" if client.protocol == 5 else "3.1.1"
    await client.disconnect()
    print(f"  broker {m.url}: OK (MQTT {version})")
    return True


async def _check_account(account: AccountConfig, timeout: float) -> bool:
    import asyncio

    label = f"  account {account.vendor}/{account.name}"
    hook = getattr(account.connector, "check_login", None)
    if hook is None:
        print(f"{label}: login check not available for {account.vendor}")
        return True
    try:
        note = await asyncio.wait_for(hook(account.options, timeout=timeout), timeout + 1)
    except Exception as exc:
        print(f"{label}: FAILED — {_reason(exc)}")
        return False
    print(f"{label}: login OK" + (f" ({note})" if note else ""))
    return True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def simulate_parser(vendor: str) -> tuple[Any, argparse.ArgumentParser]:
    """Import only this vendor's emulator; its module and the parser of its options.

    Raises ``ImportError`` when that emulator is not installed.
    """
    module = emulator_module(vendor)
    parser = argparse.ArgumentParser(
        prog=f"{PROG} simulate {vendor}",
        description=f"Emulate the {VENDORS[vendor].title} cloud on this machine "
        "(it prints the [[accounts]] table that points a gateway at it).",
        formatter_class=_Help,
    )
    module.add_arguments(parser)
    _add_global_options(parser)
    _fill_help(parser)
    return module, parser


async def _cmd_simulate(module: Any, args: argparse.Namespace) -> int:
    import asyncio

    _setup_logging(args.log_level or "info")
    task = asyncio.ensure_future(module.serve(args))
    stopper = asyncio.ensure_future(_stop_event().wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
    stopper.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)
    exc = None if task.cancelled() else task.exception()
    if isinstance(exc, OSError):
        raise UserError(f"{PROG} simulate {args.vendor}: cannot listen: {_listen_error(exc, args)}")
    if exc is not None:
        raise exc
    log.info("emulator stopped")
    return 0


def _listen_error(exc: OSError, args: argparse.Namespace) -> str:
    if isinstance(getattr(exc, "port", None), int) and exc.strerror:
        return exc.strerror  # emulators.base.PortInUse names host and port itself
    m = re.search(r"\('([^']*)', (\d+)\)", str(exc))
    reason = (exc.strerror or str(exc)).lower()
    if m:  # asyncio's "error while attempting to bind on address (…): address already in use"
        return f"{m.group(1)} port {m.group(2)}: {reason.rsplit(': ', 1)[-1]}"
    ports = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
             if k.endswith("port") and isinstance(v, int)]  # fmt: skip
    return f"{reason} ({', '.join(ports) or 'its ports'})"


async def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _setup_logging(args.log_level or "warning")
    return await run_demo(args, _stop_event())


# -------------------------------------------------------------------------------------- parser


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # Accepted before and after the command; after it, only an explicit value overrides.
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default=None if top else argparse.SUPPRESS,
        help="log level; default: gateway.log_level for run, info for simulate, warning otherwise",
    )  # fmt: skip


class _ShardRemoved(argparse.Action):
    """``--shard`` is gone; say so instead of "unrecognized arguments"."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        parser.error(
            "--shard was removed: one gateway per broker and base topic serves every account; "
            "running several instances is a separate, later capability (cluster mode)"
        )


class _Parser(argparse.ArgumentParser):
    """The top-level parser: after ``simulate VENDOR`` it imports that vendor's emulator (and
    only it) and parses the rest of the line with the emulator's own options, so the result is
    one namespace with everything ``serve(args)`` reads."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if getattr(ns, "command", None) == "simulate" and isinstance(getattr(ns, "rest", None), list):
            rest = ns.rest
            del ns.rest
            try:
                _module, vparser = simulate_parser(ns.vendor)
            except ImportError as exc:
                self.error(f"simulate {ns.vendor}: emulator unavailable ({exc})")
            ns = vparser.parse_args(rest, namespace=ns)
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    fmt = _Help
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action=_Version)
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                                parser_class=argparse.ArgumentParser)  # fmt: skip

    p = sub.add_parser("run", help="run the gateway", formatter_class=fmt,
                       description="Run the gateway until SIGTERM or Ctrl-C (then it publishes "
                       "bridge/state offline and leaves the vendors cleanly).")  # fmt: skip
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML configuration file")
    p.add_argument("--shard", nargs="?", action=_ShardRemoved, help=argparse.SUPPRESS)
    _add_global_options(p)

    p = sub.add_parser("check-config", help="validate a configuration file", formatter_class=fmt,
                       description="Validate a configuration file and name every problem in it "
                       "(key and line). Exits 0 when it is usable, 2 when not.")  # fmt: skip
    p.add_argument("config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--connect", action="store_true",
                   help="also connect to the broker once and log in to each enabled account once")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per --connect check")
    _add_global_options(p)

    names = ", ".join(VENDORS)
    p = sub.add_parser("simulate", help="run one vendor cloud emulator", formatter_class=fmt,
                       description="Run one vendor's cloud emulator on this machine. "
                       f"'{PROG} simulate VENDOR --help' lists its options.")  # fmt: skip
    p.add_argument("vendor", choices=list(VENDORS), metavar="VENDOR", help=f"one of {names}")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help="the emulator's options")
    _add_global_options(p)

    p = sub.add_parser("demo", help="emulators + gateway + broker, with a summary per second",
                       formatter_class=fmt, description="Every emulator, the gateway and a broker "
                       "in one process: the quickest way to see the topic tree.")  # fmt: skip
    p.add_argument("--vendors", default="all", help=f"comma-separated vendors ({names}), or 'all'")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="broker to use; a private mosquitto is started when none listens there")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds (none: run until Ctrl-C)")
    p.add_argument("--devices", type=int, default=4, help="simulated devices per vendor")
    p.add_argument("--base-topic", default="cloud2mqtt",
                   help="root of the demo's topic tree (use another one beside a real gateway)")
    p.add_argument("--homeassistant", action="store_true",
                   help="publish Home Assistant discovery for the emulated devices")
    p.add_argument("--force", action="store_true",
                   help="use the base topic even though bridge/state there says a gateway is online")
    _add_global_options(p)

    p = sub.add_parser("status", help="show the accounts of a running gateway (live, or --once)",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("-c", "--config", help="read the broker and base topic from this configuration")
    p.add_argument("--broker", default=None, help="broker URL (default mqtt://127.0.0.1:1883)")
    p.add_argument("--base-topic", default=None, help="base topic (default: cloud2mqtt)")
    p.add_argument("--once", action="store_true", help="print once as plain text and exit")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the gateway")
    _add_global_options(p)

    p = sub.add_parser("leases", help="cluster mode: who holds which slot, read from NATS",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("-c", "--config", required=True, help="a configuration with [cluster]")
    p.add_argument("--json", action="store_true",
                   help="every lease and account as JSON instead of the table")  # fmt: skip
    _add_global_options(p)
    return parser


async def _cmd_status(args: argparse.Namespace) -> int:
    import ssl as _ssl

    from .config import load_config, parse_mqtt_url
    from .status import run_status

    if args.config:
        config = load_config(args.config)
        m = config.mqtt
        host, port, user, password, ssl = m.host, m.port, m.username, m.password, m.ssl_context()
        base = args.base_topic or config.gateway.base_topic
    else:
        host, port, tls, user, password = parse_mqtt_url(args.broker or "mqtt://127.0.0.1:1883", "--broker")
        ssl = _ssl.create_default_context() if tls else None
        base = args.base_topic or "cloud2mqtt"
    return await run_status(host, port, base=base, username=user, password=password, ssl=ssl,
                            once=args.once, timeout=args.timeout)


async def _cmd_leases(args: argparse.Namespace) -> int:
    import orjson

    from .config import load_config

    config = load_config(args.config)
    if config.cluster is None:
        raise ConfigError("cluster", "leases reads the [cluster] section, and this file has none")
    from .cluster.node import Cluster
    from .status import write_table

    async def nothing(*_: Any, **__: Any) -> None:  # inspect() starts and stops no account
        return None

    cluster = Cluster(config.cluster, config.accounts, start_account=lambda _: None,
                      stop_account=nothing)  # fmt: skip
    view = await cluster.inspect()
    if args.json:
        sys.stdout.write(orjson.dumps(view.to_json(config.accounts)).decode() + "\n")
        return 0
    print(f"cluster at {cluster.servers_shown}: {view.summary()}")
    write_table(view.rows(config.accounts), sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "run":
            return _run(_cmd_run(args)) or 0
        if args.command == "check-config":
            return _cmd_check(args)
        if args.command == "simulate":
            return _run(_cmd_simulate(emulator_module(args.vendor), args)) or 0
        if args.command == "demo":
            return _run(_cmd_demo(args)) or 0
        if args.command == "status":
            return _run(_cmd_status(args)) or 0
        if args.command == "leases":
            return _run(_cmd_leases(args)) or 0
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except OSError as exc:  # a refused broker, a port in use, a permission: not a bug
        print(f"{PROG} {args.command}: {_reason(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
