"""TOML configuration: ``[mqtt]``, ``[gateway]`` and ``[[accounts]]``.

Secrets belong in the environment: any string may use ``${VAR}`` (or ``${VAR:-default}``),
substituted before validation. Every error names the key it is about (``accounts[1].app_secret``)
and, where the file has it, the line (for a missing key: the line of the table that lacks it),
so a user never has to guess what to fix. A file is checked as a whole: ``parse_config`` and
``load_config`` raise one ``ConfigErrors`` listing every problem, with "did you mean" for a
misspelt key. Vendor keys are validated by the vendor's connector (``Connector.parse_options``);
which connector serves which ``vendor`` comes from a vendor table (``gateway.vendors.VENDORS`` by
default; tests pass their own).

The state directory is checked apart from parsing, because checking it touches the disk:
``check_state_dir`` (``check-config``: exists and writable, or creatable) and
``ensure_state_dir`` (start-up: create it 0700, then prove it writable).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import re
import socket
import ssl
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .errors import ConfigError, ConfigErrors, did_you_mean
from .rates import RatesConfig, parse_rates
from .vendors import VENDORS, Vendor

if TYPE_CHECKING:
    from .connectors.base import Connector

__all__ = [
    "AccountConfig",
    "ClusterConfig",
    "Config",
    "GatewayConfig",
    "HomeAssistantConfig",
    "HttpConfig",
    "MqttConfig",
    "VendorTable",
    "check_state_dir",
    "default_instance_id",
    "ensure_state_dir",
    "load_config",
    "parse_config",
]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

#: what a vendor table maps a ``vendor`` name to: a ``Vendor`` entry, a connector class, or its
#: ``"module:Class"`` import path
VendorTable = Mapping[str, "Vendor | type[Connector] | str"]


class _SecretsHidden:
    """A ``repr`` without secrets: the fields as ``bridge/info`` shows them (gateway/redact.py),
    so a config object in a log line or a traceback carries no password, token or URL userinfo."""

    __slots__ = ()

    def __repr__(self) -> str:
        from .redact import redact

        shown = ", ".join(f"{k}={v!r}" for k, v in redact(self).items())
        return f"{type(self).__name__}({shown})"


def _tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, insecure: bool = False
) -> ssl.SSLContext:
    """A client TLS context: the system CAs (or ``ca_file``), an optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(slots=True, repr=False)
class MqttConfig(_SecretsHidden):
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    client_id: str = "cloud2mqtt"
    username: str | None = None
    password: str | None = None
    protocol: int = 5
    keepalive: int = 60
    qos: int = 0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    #: messages kept while the broker is unreachable, published on reconnect (0: keep none)
    buffer_size: int = 10_000

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return _tls_context(self.ca_file, self.cert_file, self.key_file, self.tls_insecure)


@dataclass(slots=True)
class GatewayConfig:
    base_topic: str = "cloud2mqtt"
    state_dir: str = "./cloud2mqtt-state"
    command_timeout: float = 10.0
    offline_grace: float = 60.0
    health_interval: float = 30.0
    per_property_topics: bool = False
    log_level: str = "info"
    #: names this instance on the broker; default ``default_instance_id(state_dir)``
    instance_id: str = ""


@dataclass(slots=True)
class AccountConfig:
    vendor: str
    name: str
    options: Any
    key: str
    enabled: bool = True
    #: the connector class that parsed ``options`` (from the vendor table given to the parser)
    connector: type[Connector] | None = None


@dataclass(slots=True)
class HttpConfig:
    """``[http]``: the /metrics, /healthz, /readyz server (off unless ``listen`` is set)."""

    listen: str | None = None  # "host:port"
    account_labels: bool = True  # per-account labels on /metrics


@dataclass(slots=True)
class HomeAssistantConfig:
    """``[homeassistant]``: MQTT discovery (gateway/consumers/homeassistant.py); off by default
    so that users who wrote YAML by hand get no duplicates on upgrade."""

    enabled: bool = False
    discovery: str = "device"  # "device" (Home Assistant >= 2024.11) or "entity"
    prefix: str = "homeassistant"
    status_topic: str = ""  # "": <prefix>/status


@dataclass(slots=True, repr=False)
class ClusterConfig(_SecretsHidden):
    """``[cluster]``: several instances share the accounts through NATS JetStream
    (gateway/cluster/); absent, the gateway runs every account itself.

    NATS authentication is at most one of: a ``.creds`` file (``credentials``: JWT + nkey), an
    nkey seed file (``nkey_seed``), ``token``, ``user`` + ``password``, or what the URLs carry
    (``nats://user:password@host``, ``nats://token@host``). TLS (``tls``) is on with a
    ``tls://`` URL or any ``tls_*`` file; the server certificate is checked against ``tls_ca``
    (default: the system CAs), ``tls_cert`` + ``tls_key`` are a client certificate."""

    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    slots: int = 64
    lease_ttl: float = 15.0
    #: slots an instance above its fair share gives up per lease round (ttl/3)
    max_moves: int = 4
    #: default: ``gateway.instance_id``
    instance_id: str = ""
    #: the instances leave through one egress IP: they share the vendors' per-IP (and per-app
    #: key) budgets, each pacing to its part (``false``: each instance has its own IP)
    shared_egress: bool = True
    #: paths: a NATS ``.creds`` file (user JWT + nkey seed), an nkey seed file
    credentials: str | None = None
    nkey_seed: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return _tls_context(self.tls_ca, self.tls_cert, self.tls_key)

    def auth_keys(self) -> str:
        """The keys that hold this instance's NATS credentials, for an error to name."""
        if self.credentials:
            return "cluster.credentials"
        if self.nkey_seed:
            return "cluster.nkey_seed"
        if self.token:
            return "cluster.token"
        if self.user:
            return "cluster.user and cluster.password"
        if any(urlsplit(url).username for url in self.servers):
            return "the user:password@ (or token@) of cluster.nats"
        return ""


@dataclass(slots=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    accounts: list[AccountConfig] = field(default_factory=list)
    #: problems that do not stop the gateway (an empty file, no enabled account)
    warnings: list[str] = field(default_factory=list)
    http: HttpConfig = field(default_factory=HttpConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    #: ``[rates.<vendor>]``: the rate model's limits (gateway/rates.py, ``ASSUMED_LIMITS``)
    rates: RatesConfig = field(default_factory=RatesConfig)
    #: ``[cluster]``; None: a single instance runs every account
    cluster: ClusterConfig | None = None


# ---------------------------------------------------------------------------------------------


def default_instance_id(state_dir: str) -> str:
    """``<hostname>-<8 hex digits of the state dir's absolute path>``.

    Stable across restarts of the same installation, different for two installations on one
    host (they cannot share a state dir: it holds the vendor tokens).
    """
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname()).strip("-.") or "host"
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:8]
    return f"{host[:40]}-{digest}"


def check_state_dir(path: str | os.PathLike[str], key: str = "gateway.state_dir") -> None:
    """Raise ``ConfigError`` unless ``path`` is a writable directory or can be created.

    Creates nothing (``check-config`` has no side effects beyond a probe file it removes).
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ConfigError(key, f"{str(p)!r} exists and is not a directory")
        _probe_writable(p, key)
        return
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(key, f"{str(p)!r} cannot be created: {str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{str(p)!r} cannot be created: {str(ancestor)!r} is not writable")


def ensure_state_dir(path: str | os.PathLike[str], key: str = "gateway.state_dir") -> Path:
    """Create the state dir (mode 0700: it holds vendor tokens) and prove it writable.

    The gateway calls this at start, so a token save can never fail silently later (each
    restart would then log in again, which CoolKit punishes). Raises ``ConfigError``.
    """
    p = Path(path)
    check_state_dir(p, key)
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(key, f"cannot create {str(p)!r}: {exc.strerror or exc}") from None
    _probe_writable(p, key)
    return p


def _probe_writable(p: Path, key: str) -> None:
    # os.access says yes to root on a read-only file system; only a write proves it.
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(key, f"{str(p)!r} is not writable: {exc.strerror or exc}") from None


def _connector_of(entry: Vendor | type[Connector] | str) -> type[Connector]:
    if isinstance(entry, Vendor):
        entry = entry.connector
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        cls: type[Connector] = getattr(importlib.import_module(module), attr)
        return cls
    return entry


class _Errors:
    """Collects every problem of one file, locating each on a line where possible."""

    def __init__(self, lines: _Lines) -> None:
        self.lines = lines
        self.found: list[ConfigError] = []

    def add(self, key: str, message: str, line: int | None = None) -> None:
        self.add_error(ConfigError(key, message, line))

    def about(self, prefix: str) -> bool:
        """Whether a problem was found with a key that starts with ``prefix``."""
        return any(e.key.startswith(prefix) for e in self.found)

    def add_error(self, error: ConfigError) -> None:
        for e in error.errors if isinstance(error, ConfigErrors) else (error,):
            if any((f.key, f.message) == (e.key, e.message) for f in self.found):
                continue  # a NaN is seen by both the file check and the connector
            self.found.append(e.with_line(self.lines.locate(e.key)))


def _substitute(value: Any, key: str, env: Mapping[str, str], errors: _Errors) -> Any:
    if isinstance(value, str):
        leftover = _ENV.sub("", value)
        if "${" in leftover:
            bad = leftover[leftover.index("${") :][:20]
            errors.add(key, f"unterminated or malformed {bad!r}: write ${{NAME}} or ${{NAME:-default}}")
            return value

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.add(key, f"environment variable {name} is not set")
            return ""

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, f"{key}.{k}" if key else k, env, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{key}[{i}]", env, errors) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        errors.add(key, f"must be a finite number, got {value!r}")
    return value


def parse_mqtt_url(url: str, key: str = "mqtt.url") -> tuple[str, int, bool, str | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl", "tls"):
        raise ConfigError(key, f"unsupported scheme {parts.scheme!r} (use mqtt:// or mqtts://)")
    tls = parts.scheme in ("mqtts", "ssl", "tls")
    if not parts.hostname:
        raise ConfigError(key, "missing host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(key, "invalid port") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, user, password


_MISSING: Any = object()


class _Checker:
    """Pulls typed values out of one table; a wrong value is recorded and the default used."""

    def __init__(self, table: dict[str, Any], prefix: str, errors: _Errors) -> None:
        self.table = dict(table)
        self.prefix = prefix
        self.errors = errors
        self.known: set[str] = set()

    def _key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> None:
        self.errors.add(self._key(name), message)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.known.add(name)
        if name not in self.table:
            return default
        value = self.table.pop(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.error(name, f"expected {names}, got {type(value).__name__} {value!r}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            return default  # reported once, by _substitute
        return value

    def path(self, name: str, looks_right: Callable[[str], str] | None = None) -> str | None:
        """A file path that must name a readable file (checked now, not at first use), and
        whose text ``looks_right`` finds no fault with (it names the fault, never the text:
        such files hold keys)."""
        value: str | None = self.get(name, str, None)
        if value is None:
            return None
        try:
            if not Path(value).is_file():
                self.error(name, f"file {value!r} does not exist")
            elif looks_right is None:
                if not os.access(value, os.R_OK):
                    self.error(name, f"file {value!r} is not readable")
            elif problem := looks_right(Path(value).read_text("utf-8")):
                self.error(name, f"{value!r} {problem}")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self.error(name, f"cannot read {value!r}: {reason}")
        return value

    def finish(self, also_known: tuple[str, ...] = ()) -> None:
        known = self.known | set(also_known)
        for name in self.table:
            self.error(name, "unknown key" + did_you_mean(name, known))


class _Lines:
    """Finds the line of ``section[i].key`` in the source text, best effort."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def locate(self, key: str) -> int | None:
        """The key's own line, else the line of the innermost table that holds (or lacks) it."""
        line = self.find(key)
        if line is None:
            m = re.match(r"^(\w+(?:\[\d+\])?)\.", key)
            if m:
                line = self.find(m.group(1))
        return line

    def find(self, key: str) -> int | None:
        m = re.match(r"^(\w+)(?:\[(\d+)\])?\.?([\w.-]*)", key)
        if not m or not self.lines:
            return None
        section, index, rest = m.group(1), m.group(2), m.group(3)
        leaf = rest.split(".")[0] if rest else None
        header = f"[[{section}]]" if index is not None else f"[{section}]"
        seen = -1
        inside = False
        root = True
        for no, line in enumerate(self.lines, 1):
            s = line.strip()
            if s.startswith("["):
                inside = root = False
                if s.split("#", 1)[0].replace(" ", "") == header:
                    seen += 1
                    if index is None or seen == int(index):
                        inside = True
                        if leaf is None:
                            return no
                continue
            if root and index is None and leaf is None and re.match(rf"^{re.escape(section)}\s*=", s):
                return no  # a top-level key (``bogus = 1``, or an inline ``mqtt = {…}``)
            if inside and leaf and re.match(rf"^{re.escape(leaf)}\s*=", s):
                return no
        return None


def parse_config(
    raw: dict[str, Any],
    text: str = "",
    env: Mapping[str, str] | None = None,
    *,
    vendors: VendorTable | None = None,
) -> Config:
    """Validate a parsed TOML document; raise one ``ConfigErrors`` naming every problem.

    ``text`` (the file's source) lets errors name lines; ``env`` replaces ``os.environ`` for
    ``${VAR}``; ``vendors`` maps each ``vendor`` name to its connector (``VENDORS`` by default).
    """
    cfg, errors = _parse(raw, text, env, vendors)
    if errors.found:
        raise ConfigErrors(errors.found)
    return cfg


def _parse(
    raw: dict[str, Any], text: str, env: Mapping[str, str] | None, vendors: VendorTable | None
) -> tuple[Config, _Errors]:
    errors = _Errors(_Lines(text))
    table: Mapping[str, Vendor | type[Connector] | str] = (
        VENDORS if vendors is None else vendors
    )
    raw = _substitute(raw, "", os.environ if env is None else env, errors)
    top = _Checker(raw, "", errors)
    mqtt_raw = top.get("mqtt", dict, {})
    gw_raw = top.get("gateway", dict, {})
    accounts_raw = top.get("accounts", list, [])
    http_raw = top.get("http", dict, {})
    ha_raw = top.get("homeassistant", dict, {})
    rates_raw = top.get("rates", dict, {})
    cluster_raw = top.get("cluster", dict, None)
    top.finish()

    cfg = Config()
    _parse_mqtt(cfg.mqtt, _Checker(mqtt_raw, "mqtt", errors))
    _parse_gateway(cfg.gateway, _Checker(gw_raw, "gateway", errors))
    _parse_accounts(cfg, accounts_raw, table, errors)
    _parse_http(cfg.http, _Checker(http_raw, "http", errors))
    _parse_homeassistant(cfg.homeassistant, _Checker(ha_raw, "homeassistant", errors))
    if cluster_raw is not None:
        cfg.cluster = ClusterConfig(instance_id=cfg.gateway.instance_id)
        _parse_cluster(cfg.cluster, _Checker(cluster_raw, "cluster", errors))
        if cfg.mqtt.protocol == 4:
            # Refused, not a fallback: without MQTT 5 every instance would get every command
            # (shared subscriptions are an MQTT 5 feature) and no Response Topic could be kept.
            errors.add(
                "mqtt.protocol",
                "cluster mode needs MQTT 5: the instances share the command topics through an "
                'MQTT 5 shared subscription; remove protocol = "3.1.1" (or the [cluster] section)',
            )
    try:  # [rates.<vendor>]: validated by gateway/rates.py
        cfg.rates = parse_rates(rates_raw, table)
    except ConfigError as exc:
        errors.add_error(exc)
    if not cfg.accounts:
        cfg.warnings.append("no [[accounts]]: the gateway will publish nothing but bridge/*")
    elif not any(a.enabled for a in cfg.accounts):
        cfg.warnings.append("every account has enabled = false")
    return cfg, errors


def _parse_mqtt(mqtt: MqttConfig, m: _Checker) -> None:
    url = m.get("url", str, None)
    if url is not None:
        try:
            mqtt.host, mqtt.port, mqtt.tls, mqtt.username, mqtt.password = parse_mqtt_url(url)
        except ConfigError as exc:
            m.errors.add_error(exc)
    mqtt.client_id = m.get("client_id", str, mqtt.client_id)
    if not mqtt.client_id:
        m.error("client_id", "must not be empty")
    mqtt.username = m.get("username", str, mqtt.username)
    mqtt.password = m.get("password", str, mqtt.password)
    protocol = m.get("protocol", (int, str), 5)
    if protocol in (5, "5"):
        mqtt.protocol = 5
    elif protocol == "3.1.1":
        mqtt.protocol = 4
    else:
        m.error("protocol", f'expected 5 or "3.1.1" (a string), got {protocol!r}')
    mqtt.keepalive = m.get("keepalive", int, 60)
    if not 5 <= mqtt.keepalive <= 65535:
        m.error("keepalive", "must be between 5 and 65535 seconds")
    mqtt.qos = m.get("qos", int, 0)
    if mqtt.qos not in (0, 1):
        m.error("qos", "must be 0 or 1")
    mqtt.buffer_size = m.get("buffer_size", int, mqtt.buffer_size)
    if mqtt.buffer_size < 0:
        m.error("buffer_size", "must be 0 or more (messages kept during a broker outage)")
    for name in ("ca_file", "cert_file", "key_file"):
        value = m.path(name)
        setattr(mqtt, name, value)
        if value is not None and name == "ca_file":
            mqtt.tls = True
    mqtt.tls = m.get("tls", bool, mqtt.tls)
    mqtt.tls_insecure = m.get("tls_insecure", bool, False)
    if mqtt.key_file and not mqtt.cert_file:
        m.error("key_file", "given without cert_file")
    m.finish()


def _parse_gateway(gw: GatewayConfig, g: _Checker) -> None:
    base = g.get("base_topic", str, "cloud2mqtt").strip("/")
    if not base or any(c in base for c in "+#\x00"):
        g.error("base_topic", "must be non-empty and contain no + # or NUL")
    gw.base_topic = base
    gw.state_dir = g.get("state_dir", str, gw.state_dir)
    if not gw.state_dir:
        g.error("state_dir", "must not be empty")
    for name in ("command_timeout", "offline_grace", "health_interval"):
        value = g.get(name, float, getattr(gw, name))
        if value <= 0:
            g.error(name, "must be positive")
        else:
            setattr(gw, name, value)
    gw.per_property_topics = g.get("per_property_topics", bool, False)
    level = g.get("log_level", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        g.error("log_level", "must be debug, info, warning or error")
    else:
        gw.log_level = level
    instance = g.get("instance_id", str, None)
    if instance is None:
        gw.instance_id = default_instance_id(gw.state_dir or ".")
    elif not _NAME.match(instance) or len(instance) > 64:
        g.error("instance_id", "use 1–64 letters, digits, '_', '-' and '.'")
    else:
        gw.instance_id = instance
    g.finish()


def _parse_http(http: HttpConfig, h: _Checker) -> None:
    """``[http]`` (gateway/http.py): ``listen = "host:port"``, ``account_labels``."""
    http.listen = h.get("listen", str, None)
    if http.listen is not None:
        _, _, listen_port = http.listen.rpartition(":")
        if not listen_port.isdigit() or int(listen_port) > 65535:
            h.error("listen", f'expected "host:port", got {http.listen!r}')
            http.listen = None
    http.account_labels = h.get("account_labels", bool, True)
    h.finish()


def _parse_homeassistant(ha: HomeAssistantConfig, h: _Checker) -> None:
    """``[homeassistant]``: ``enabled``, ``discovery``, ``prefix``, ``status_topic``."""
    ha.enabled = h.get("enabled", bool, False)
    mode = h.get("discovery", str, "device")
    if mode not in ("device", "entity"):
        h.error("discovery", f'must be "device" or "entity", got {mode!r}')
    else:
        ha.discovery = mode
    for name in ("prefix", "status_topic"):
        value = h.get(name, str, getattr(ha, name))
        if any(c in value for c in "+#\x00") or value.startswith("/") or value.endswith("/"):
            h.error(name, f"not a usable topic: {value!r}")
        elif name == "prefix" and not value:
            h.error(name, "must not be empty")
        else:
            setattr(ha, name, value)
    h.finish()


def _parse_cluster(cluster: ClusterConfig, c: _Checker) -> None:
    """``[cluster]``: ``nats`` (a URL or a list of them), ``slots``, ``lease_ttl``,
    ``max_moves``, ``instance_id``, ``shared_egress``, and how to reach NATS: one way to
    authenticate (``_parse_nats_auth``) and TLS (``_parse_nats_tls``)."""
    servers = c.get("nats", (str, list), cluster.servers)
    urls = [servers] if isinstance(servers, str) else servers
    if not urls:
        c.error("nats", "must name at least one server")
    for url in urls:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("nats", "tls", "ws", "wss"):
            c.error("nats", f"expected nats://host:port (or tls://, ws://, wss://), got {url!r}")
            break
    else:
        cluster.servers = list(urls) or cluster.servers
    cluster.slots = c.get("slots", int, cluster.slots)
    if not 1 <= cluster.slots <= 4096:
        c.error("slots", "must be between 1 and 4096")
    cluster.lease_ttl = c.get("lease_ttl", float, cluster.lease_ttl)
    if cluster.lease_ttl < 1:
        c.error("lease_ttl", "must be at least 1 second")
    cluster.max_moves = c.get("max_moves", int, cluster.max_moves)
    if cluster.max_moves < 1:
        c.error("max_moves", "must be at least 1")
    instance = c.get("instance_id", str, None)
    if instance is not None:
        if not _NAME.match(instance) or len(instance) > 64:
            c.error("instance_id", "use 1–64 letters, digits, '_', '-' and '.'")
        else:
            cluster.instance_id = instance
    cluster.shared_egress = c.get("shared_egress", bool, cluster.shared_egress)
    _parse_nats_auth(cluster, c)
    _parse_nats_tls(cluster, c)
    c.finish()


def _parse_nats_auth(cluster: ClusterConfig, c: _Checker) -> None:
    cluster.credentials = c.path("credentials", _looks_like_creds)
    cluster.nkey_seed = c.path("nkey_seed", _looks_like_seed)
    for name in ("token", "user", "password"):
        value = c.get(name, str, None)
        if value == "":
            c.error(name, "must not be empty (remove the key instead)")
        setattr(cluster, name, value or None)
    if cluster.user and not cluster.password:
        c.error("user", "given without cluster.password")
    if cluster.password and not cluster.user:
        c.error("password", "given without cluster.user")
    ways = [
        (name, f"cluster.{name}")
        for name in ("credentials", "nkey_seed", "token")
        if getattr(cluster, name)
    ]
    if cluster.user or cluster.password:
        ways.append(("user" if cluster.user else "password", "cluster.user/password"))
    if any(urlsplit(url).username or urlsplit(url).password for url in cluster.servers):
        ways.append(("nats", "the user:password@ (or token@) of cluster.nats"))
    if len(ways) > 1:
        c.error(ways[1][0], "NATS takes one way to authenticate, and "
                f"{', '.join(w for _, w in ways)} are given: keep one")  # fmt: skip


def _parse_nats_tls(cluster: ClusterConfig, c: _Checker) -> None:
    for name in ("tls_ca", "tls_cert", "tls_key"):
        setattr(cluster, name, c.path(name))
    if cluster.tls_cert and not cluster.tls_key:
        c.error("tls_cert", "given without cluster.tls_key (the client certificate's key)")
    if cluster.tls_key and not cluster.tls_cert:
        c.error("tls_key", "given without cluster.tls_cert")
    wanted = [f"cluster.{n}" for n in ("tls_ca", "tls_cert", "tls_key") if getattr(cluster, n)]
    schemes = {urlsplit(u).scheme: u for u in cluster.servers}
    wanted += [f"the {k}:// URL {u!r}" for k, u in schemes.items() if k in ("tls", "wss")]
    tls = c.get("tls", bool, None)
    if tls is False and wanted:
        c.error("tls", f"false, but {wanted[0]} asks for TLS")
    cluster.tls = bool(wanted) if tls is None else tls
    if cluster.tls and "ws" in schemes:
        c.error("nats", f"{schemes['ws']!r} is plain text, and TLS is asked for: use wss://")
    if cluster.tls and not c.errors.about("cluster.tls"):
        try:  # a CA file that holds no certificate, a key that is not the certificate's
            cluster.ssl_context()
        except (ssl.SSLError, OSError) as exc:
            name = "tls_cert" if cluster.tls_cert else "tls_ca"
            c.error(name, f"unusable for TLS: {getattr(exc, 'reason', None) or exc}")


def _looks_like_creds(text: str) -> str:
    # nats-py reads the line after the JWT marker, looping for ever when there is none
    lines = [line.strip() for line in text.splitlines()] + [""]
    jwt = "-----BEGIN NATS USER JWT-----"
    if jwt not in lines or not lines[lines.index(jwt) + 1]:
        return f"is not a NATS .creds file: no user JWT after {jwt}"
    if not any("BEGIN USER NKEY SEED" in line for line in lines):
        return "is not a NATS .creds file: no -----BEGIN USER NKEY SEED----- section"
    return ""


def _looks_like_seed(text: str) -> str:
    seed = text.strip()
    if not re.fullmatch(r"S[A-Z][A-Z2-7]{50,}", seed):
        return "is not an nkey seed file (one seed, 'SU…', as nk -gen user writes it)"
    return ""


_ACCOUNT_KEYS = ("vendor", "name", "enabled")


def _parse_accounts(
    cfg: Config,
    accounts_raw: list[Any],
    table: Mapping[str, Vendor | type[Connector] | str],
    errors: _Errors,
) -> None:
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(accounts_raw):
        key = f"accounts[{i}]"
        if not isinstance(entry, dict):
            errors.add(key, "must be a table")
            continue
        a = _Checker(entry, key, errors)
        vendor = a.get("vendor", str, None)
        name = a.get("name", str, None)
        enabled = a.get("enabled", bool, True)
        if name is None:
            if "name" not in entry:
                errors.add(f"{key}.name", "missing")
        elif not _NAME.match(name):
            a.error("name", "use letters, digits, '_', '-' and '.' only")
        if vendor is None:
            if "vendor" not in entry:
                errors.add(f"{key}.vendor", f"missing (one of {', '.join(table)})")
            continue
        if vendor not in table:
            a.error("vendor", f"unknown vendor {vendor!r} (one of {', '.join(table)})"
                    + did_you_mean(vendor, table))  # fmt: skip
            continue
        if name is not None:
            if (vendor, name) in seen:
                a.error("name", f"duplicate account {vendor}/{name}")
            seen.add((vendor, name))
        try:
            cls = _connector_of(table[vendor])
        except (ImportError, AttributeError) as exc:
            a.error("vendor", f"connector for {vendor!r} unavailable: {exc}")
            continue
        options = _parse_options(cls.parse_options, a.table, key, errors)
        if options is not _MISSING and name is not None:
            cfg.accounts.append(AccountConfig(vendor, name, options, key, enabled, cls))


def _parse_options(
    parse: Callable[[Mapping[str, Any], str], Any],
    raw: dict[str, Any],
    key: str,
    errors: _Errors,
) -> Any:
    """Run the connector's parser until it has named every problem it can see.

    A connector stops at its first problem. Each round takes the reported keys out of play
    and asks again: a present key is dropped (an unknown key changes nothing; a bad optional
    value falls back to its default), a missing one gets a placeholder. It ends when the
    parser succeeds, repeats itself, or names a problem neither step can take away.
    """
    reported: set[tuple[str, str]] = set()
    table = dict(raw)
    for _ in range(2 * len(raw) + 8):
        try:
            parsed = parse(table, key)
        except ConfigError as exc:
            found = exc.errors if isinstance(exc, ConfigErrors) else [exc]
            fresh = [e for e in found if (e.key, e.message) not in reported]
            if not fresh:
                return _MISSING
            for e in fresh:
                errors.add_error(e)
                reported.add((e.key, e.message))
                name = _field(e.key, key)
                if name in table and table[name] is not _PLACEHOLDER:
                    del table[name]
                elif name not in table and e.message.startswith("missing"):
                    table[name] = _PLACEHOLDER
                else:
                    return _MISSING
            continue
        return _MISSING if reported else parsed
    return _MISSING


class _Placeholder(str):
    """Stands in for a missing key while looking for a connector's further problems."""

    __slots__ = ()


_PLACEHOLDER = _Placeholder("placeholder")


def _field(error_key: str, prefix: str) -> str:
    rest = error_key[len(prefix) + 1 :] if error_key.startswith(prefix + ".") else error_key
    return re.split(r"[.\[]", rest, maxsplit=1)[0]


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    vendors: VendorTable | None = None,
    state_dir: bool = False,
) -> Config:
    """Read and validate a TOML file; raise one ``ConfigErrors`` naming every problem.

    With ``state_dir=True`` the state dir is also checked (``check_state_dir``), its problem
    reported with the others.
    """
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigErrors([ConfigError(str(path), "no such file")]) from None
    except IsADirectoryError:
        raise ConfigErrors([ConfigError(str(path), "is a directory, not a TOML file")]) from None
    except OSError as exc:
        raise ConfigErrors([ConfigError(str(path), f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigErrors([ConfigError(str(path), f"not UTF-8 text ({exc.reason})")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigErrors(
            [ConfigError(str(path), f"not valid TOML: {exc}", int(m.group(1)) if m else None)]
        ) from None
    cfg, errors = _parse(raw, text, env, vendors)
    if state_dir and not any(e.key == "gateway.state_dir" for e in errors.found):
        try:
            check_state_dir(cfg.gateway.state_dir)
        except ConfigError as exc:
            errors.add_error(exc)
    if errors.found:
        raise ConfigErrors(errors.found)
    return cfg
