"""Settings: environment ``INGESTD_*`` over an optional TOML file named by ``INGESTD_CONFIG``.

Every key here is documented, with its default, in ``config/ingestd.example.toml``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import phonenumbers
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ingestd.errors import SettingsError as SettingsError  # where the CLI has always found it


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGESTD_", extra="forbid")

    # Where things are
    database_url: str | None = None
    landing_root: Path = Path("landing")
    state_dir: Path = Path(".state")

    # Database
    pool_min_size: int = Field(1, ge=1)
    pool_max_size: int = Field(8, ge=1)
    db_retry_initial: float = Field(0.5, gt=0)
    db_retry_max: float = Field(30.0, gt=0)
    # A connection that answers nothing for this long is dead (keepalives, TCP user
    # timeout, waits for a pooled connection): see ingestd/db/liveness.py.
    db_dead_after_seconds: float = Field(15.0, ge=2, le=3600)

    # Watching
    settle_seconds: float = Field(2.0, ge=0)
    write_timeout_seconds: float = Field(900.0, gt=0)
    rescan_seconds: float = Field(30.0, gt=0)
    polling_observer: bool = False
    polling_interval: float = Field(1.0, gt=0)
    marker_mode: bool = False
    # A file written in place whose last record has no line break waits this long for a
    # newer upload before it is applied (with a warning); 0: no such wait.
    partial_grace_seconds: float = Field(60.0, ge=0)

    # Work
    workers: int = Field(4, ge=1)
    chunk_size: int = Field(5000, ge=1)
    # A record (its lines) longer than this is a row error; memory never follows a line.
    max_line_bytes: int = Field(1 << 20, ge=1024)
    allow_duplicates: bool = False
    stop_timeout: float = Field(30.0, gt=0)
    default_region: str = "US"
    sidecar_formula_guard: bool = True
    # Memory the daemon keeps for good: each is a bound, not a reservation.
    mdn_cache_entries: int = Field(10_000, ge=0)  # per cache in persons/phones.py; 0: none
    malloc_arena_max: int = Field(2, ge=0)  # glibc malloc arenas (ingestd/malloc.py); 0: glibc's

    # Carrier lookup
    carrier_mode: Literal["offline", "http"] = "offline"
    carrier_url: str | None = None
    carrier_timeout: float = Field(5.0, gt=0)
    carrier_concurrency: int = Field(8, ge=1)
    carrier_max_attempts: int = Field(5, ge=1)
    carrier_backoff_initial: float = Field(0.2, ge=0)
    carrier_backoff_max: float = Field(5.0, ge=0)
    carrier_max_wait: float = Field(30.0, ge=0)
    carrier_cache_ttl: float = Field(86400.0, ge=0)

    # Operations
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    metrics_address: str | None = None
    retention_days: int = Field(0, ge=0)  # 0: keep finished files forever
    progress_seconds: float = Field(5.0, gt=0)
    stuck_seconds: float = Field(300.0, gt=0)
    # Several instances: a peer whose heartbeat is older than this loses its companies.
    lease_seconds: float = Field(30.0, gt=0)

    # HTTP intake (docs/http.md): off unless http_address is set.
    http_address: str | None = None
    http_body_limit: int = Field(256 << 20, ge=1024)  # bytes of one request body
    http_header_timeout: float = Field(10.0, gt=0)  # to receive a request's headers
    http_body_timeout: float = Field(30.0, gt=0)  # the longest wait for the next body bytes
    http_max_concurrency: int = Field(16, ge=1)  # requests in hand; more get 503

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        return check_region(v)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("INGESTD_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Build settings or raise ``SettingsError`` with a one-line message.

    Unknown ``INGESTD_*`` environment variables are warned about on stderr, not refused:
    the environment is shared with other programs and older deployments.
    """
    config = os.environ.get("INGESTD_CONFIG")
    if config and not Path(config).is_file():
        raise SettingsError(f"INGESTD_CONFIG: no such file: {config}")
    if config:
        _check_toml(Path(config))
    for warning in unknown_env_warnings(os.environ):
        print(f"ingestd: warning: {warning}", file=sys.stderr)
    try:
        settings = Settings(**overrides)
        _check_settings(settings, config)
        return settings
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        where = f"env INGESTD_{key.upper()}"
        if config:
            where += f" or {key} in {config}"
        raise SettingsError(f"invalid setting {key} ({where}): {err['msg']}") from None
    except SettingsError:
        raise
    except Exception as exc:  # a TOML syntax error, for instance
        raise SettingsError(f"invalid settings: {exc}") from None


# -- validation beyond single fields ---------------------------------------------------------
# Kept apart from the model so that each check can name its key and where it came from.

# Read by ingestd but not settings: the config file itself, the crash-test hook, the suite's
# database and its chaos run's seed.
OTHER_ENV = {"INGESTD_CONFIG", "INGESTD_FAILPOINT", "INGESTD_TEST_DATABASE_URL",
             "INGESTD_CHAOS_SEED"}

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def check_region(region: str) -> str:
    """A region phonenumbers knows (``US``, ``GB``…), upper-cased; ValueError otherwise."""
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown region {region!r}: use a two-letter region code such as US "
                         "or GB")
    return code


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _check_toml(path: Path) -> None:
    """Syntax errors with their line, and unknown keys, before pydantic sees the file."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"invalid TOML in {path}: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"INGESTD_CONFIG: cannot read {path}: {exc.strerror}") from None
    fields = list(Settings.model_fields)
    for key in data:
        if key not in Settings.model_fields:
            raise SettingsError(f"unknown setting {key} in {path}{_did_you_mean(key, fields)}")


def unknown_env_warnings(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """One message per ``INGESTD_*`` variable that names no setting."""
    known = {f"INGESTD_{name.upper()}" for name in Settings.model_fields} | OTHER_ENV
    out = []
    for var in sorted(environ):
        upper = var.upper()
        if upper.startswith("INGESTD_") and upper not in known:
            out.append(f"unknown environment variable {var} is ignored"
                       + _did_you_mean(upper, sorted(known)))
    return out


def _where(key: str, config: str | None) -> str:
    where = f"env INGESTD_{key.upper()}"
    return where + (f" or {key} in {config}" if config else "")


def _check_settings(s: Settings, config: str | None) -> None:
    for key in ("metrics_address", "http_address"):
        address = getattr(s, key)
        if address is not None:
            try:
                parse_host_port(address)
            except ValueError as exc:
                raise SettingsError(f"invalid setting {key} ({_where(key, config)}): {exc}") \
                    from None
    if s.carrier_url is not None:
        url = urlsplit(s.carrier_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SettingsError(f"invalid setting carrier_url ({_where('carrier_url', config)}):"
                                f" {s.carrier_url!r} is not an http:// or https:// URL")
    if s.database_url:
        try:
            conninfo_to_dict(s.database_url)
        except psycopg.Error as exc:
            raise SettingsError(
                f"invalid setting database_url ({_where('database_url', config)}): not a "
                f"PostgreSQL URL or conninfo string ({str(exc).strip()}); for example "
                "postgresql://USER:PASSWORD@HOST:5432/DBNAME") from None
    if s.carrier_mode == "http" and not s.carrier_url:
        raise SettingsError(f"carrier_mode = \"http\" needs carrier_url "
                            f"({_where('carrier_url', config)}), the lookup service's URL")


def parse_host_port(address: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (every IPv4 interface) or ``[v6]:port``; ValueError otherwise."""
    host, sep, port_s = address.rpartition(":")
    if not sep:
        raise ValueError(f"{address!r} is not host:port (e.g. 127.0.0.1:9108)")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{address!r}: {host} is no IPv6 address") from None
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{address!r}: write an IPv6 address in brackets, e.g. [::1]:9108")
    elif host and not _HOST.match(host):
        raise ValueError(f"{address!r}: {host!r} is no host name or address")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{address!r}: the port must be a number from 0 to 65535")
    return host or "0.0.0.0", int(port_s)


def check_landing_root(s: Settings) -> None:
    """The landing root must be there: a daemon or a report on an empty, mistyped or
    relative-to-the-wrong-folder path would watch or count nothing, silently."""
    root = s.landing_root
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise SettingsError(f"landing_root {root.absolute()} {what}; create it or fix "
                            "INGESTD_LANDING_ROOT")


def check_for_run(s: Settings) -> None:
    """What only ``ingestd run`` needs, checked before the database or the watcher start."""
    check_landing_root(s)
    for key, address in (("metrics_address", s.metrics_address),
                         ("http_address", s.http_address)):
        if address is None:
            continue
        host, port = parse_host_port(address)
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # as the servers bind: TIME_WAIT from a previous run is no conflict
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise SettingsError(f"{key} {address} cannot be bound: {reason}") from None
