"""TOML configuration: ``[mqtt]``, ``[gateway]`` and ``[[accounts]]``.

Secrets belong in the environment: any string may use ``${VAR}`` (or ``${VAR:-default}``),
substituted before validation. Every error names the key it is about (``accounts[1].app_secret``)
and, where the file has it, the line, so a user never has to guess what to fix. Vendor keys are
validated by the vendor's connector (``Connector.parse_options``).
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .connectors import CONNECTORS, connector_class
from .errors import ConfigError

__all__ = ["AccountConfig", "Config", "GatewayConfig", "MqttConfig", "load_config", "parse_config"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(slots=True)
class MqttConfig:
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
    buffer_size: int = 10_000

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(slots=True)
class GatewayConfig:
    base_topic: str = "cloud2mqtt"
    state_dir: str = "./cloud2mqtt-state"
    command_timeout: float = 10.0
    offline_grace: float = 60.0
    health_interval: float = 30.0
    per_property_topics: bool = False
    log_level: str = "info"


@dataclass(slots=True)
class AccountConfig:
    vendor: str
    name: str
    options: Any
    key: str
    enabled: bool = True


@dataclass(slots=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    accounts: list[AccountConfig] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------


def _substitute(value: Any, key: str, env: dict[str, str]) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(key, f"environment variable {name} is not set")

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, f"{key}.{k}" if key else k, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{key}[{i}]", env) for i, v in enumerate(value)]
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


class _Checker:
    """Pulls typed values out of a table, naming the key on every error."""

    def __init__(self, table: dict[str, Any], prefix: str, lines: _Lines) -> None:
        self.table = dict(table)
        self.prefix = prefix
        self.lines = lines

    def _key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        key = self._key(name)
        return ConfigError(key, message, self.lines.find(key))

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if name not in self.table:
            return default
        value = self.table.pop(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.error(name, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def finish(self) -> None:
        for name in self.table:
            raise self.error(name, "unknown key")


class _Lines:
    """Finds the line of ``section[i].key`` in the source text, best effort."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def find(self, key: str) -> int | None:
        m = re.match(r"^(\w+)(?:\[(\d+)\])?\.?([\w.-]*)", key)
        if not m or not self.lines:
            return None
        section, index, rest = m.group(1), m.group(2), m.group(3)
        leaf = rest.split(".")[0] if rest else None
        header = f"[[{section}]]" if index is not None else f"[{section}]"
        seen = -1
        inside = False
        for no, line in enumerate(self.lines, 1):
            s = line.strip()
            if s.startswith("["):
                inside = False
                if s.replace(" ", "") == header:
                    seen += 1
                    if index is None or seen == int(index):
                        inside = True
                        if leaf is None:
                            return no
                continue
            if inside and leaf and re.match(rf"^{re.escape(leaf)}\s*=", s):
                return no
        return None


def parse_config(
    raw: dict[str, Any], text: str = "", env: dict[str, str] | None = None
) -> Config:
    lines = _Lines(text)
    raw = _substitute(raw, "", dict(os.environ) if env is None else env)
    top = _Checker(raw, "", lines)
    mqtt_raw = top.get("mqtt", dict, {})
    gw_raw = top.get("gateway", dict, {})
    accounts_raw = top.get("accounts", list, [])
    top.finish()

    cfg = Config()
    m = _Checker(mqtt_raw, "mqtt", lines)
    url = m.get("url", str, None)
    if url is not None:
        try:
            host, port, tls, user, password = parse_mqtt_url(url)
        except ConfigError as exc:
            raise ConfigError(exc.key, exc.message, lines.find("mqtt.url")) from None
        cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls = host, port, tls
        cfg.mqtt.username, cfg.mqtt.password = user, password
    cfg.mqtt.client_id = m.get("client_id", str, cfg.mqtt.client_id)
    cfg.mqtt.username = m.get("username", str, cfg.mqtt.username)
    cfg.mqtt.password = m.get("password", str, cfg.mqtt.password)
    protocol = m.get("protocol", (int, str), 5)
    if str(protocol) in ("5", "5.0"):
        cfg.mqtt.protocol = 5
    elif str(protocol) in ("4", "3.1.1", "311"):
        cfg.mqtt.protocol = 4
    else:
        raise m.error("protocol", f"expected 5 or \"3.1.1\", got {protocol!r}")
    cfg.mqtt.keepalive = m.get("keepalive", int, 60)
    if not 5 <= cfg.mqtt.keepalive <= 65535:
        raise m.error("keepalive", "must be between 5 and 65535 seconds")
    cfg.mqtt.qos = m.get("qos", int, 0)
    if cfg.mqtt.qos not in (0, 1):
        raise m.error("qos", "must be 0 or 1")
    for name in ("ca_file", "cert_file", "key_file"):
        value = m.get(name, str, None)
        if value is not None and not Path(value).is_file():
            raise m.error(name, f"file {value!r} does not exist")
        setattr(cfg.mqtt, name, value)
        if value is not None and name == "ca_file":
            cfg.mqtt.tls = True
    cfg.mqtt.tls = m.get("tls", bool, cfg.mqtt.tls)
    cfg.mqtt.tls_insecure = m.get("tls_insecure", bool, False)
    if cfg.mqtt.key_file and not cfg.mqtt.cert_file:
        raise m.error("key_file", "given without cert_file")
    m.finish()

    g = _Checker(gw_raw, "gateway", lines)
    base = g.get("base_topic", str, "cloud2mqtt").strip("/")
    if not base or any(c in base for c in "+#\x00"):
        raise g.error("base_topic", "must be non-empty and contain no + # or NUL")
    cfg.gateway.base_topic = base
    cfg.gateway.state_dir = g.get("state_dir", str, cfg.gateway.state_dir)
    for name in ("command_timeout", "offline_grace", "health_interval"):
        value = g.get(name, float, getattr(cfg.gateway, name))
        if value <= 0:
            raise g.error(name, "must be positive")
        setattr(cfg.gateway, name, value)
    cfg.gateway.per_property_topics = g.get("per_property_topics", bool, False)
    level = g.get("log_level", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise g.error("log_level", "must be debug, info, warning or error")
    cfg.gateway.log_level = level
    g.finish()

    seen: set[tuple[str, str]] = set()
    for i, table in enumerate(accounts_raw):
        key = f"accounts[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(key, "must be a table", lines.find(key))
        a = _Checker(table, key, lines)
        vendor = a.get("vendor", str, None)
        if vendor is None:
            raise ConfigError(f"{key}.vendor", "missing", lines.find(key))
        if vendor not in CONNECTORS:
            raise a.error("vendor", f"unknown vendor {vendor!r} (one of {', '.join(CONNECTORS)})")
        name = a.get("name", str, None)
        if name is None:
            raise ConfigError(f"{key}.name", "missing", lines.find(key))
        if not _NAME.match(name):
            raise a.error("name", "use letters, digits, '_', '-' and '.' only")
        if (vendor, name) in seen:
            raise a.error("name", f"duplicate account {vendor}/{name}")
        seen.add((vendor, name))
        enabled = a.get("enabled", bool, True)
        try:
            cls = connector_class(vendor)
        except (ImportError, AttributeError) as exc:
            raise a.error("vendor", f"connector for {vendor!r} unavailable: {exc}") from None
        try:
            options = cls.parse_options(a.table, key)
        except ConfigError as exc:
            if exc.line is None:
                raise ConfigError(exc.key, exc.message, lines.find(exc.key)) from None
            raise
        cfg.accounts.append(AccountConfig(vendor, name, options, key, enabled))
    return cfg


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(str(path), f"not valid TOML: {exc}", int(m.group(1)) if m else None) from None
    return parse_config(raw, text, env)
