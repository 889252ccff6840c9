"""Settings: environment ``INGESTD_*`` over an optional TOML file named by ``INGESTD_CONFIG``.

Every key here is documented, with its default, in ``config/ingestd.example.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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

    # Watching
    settle_seconds: float = Field(2.0, ge=0)
    write_timeout_seconds: float = Field(900.0, gt=0)
    rescan_seconds: float = Field(30.0, gt=0)
    polling_observer: bool = False
    polling_interval: float = Field(1.0, gt=0)
    marker_mode: bool = False

    # Work
    workers: int = Field(4, ge=1)
    chunk_size: int = Field(5000, ge=1)
    # A record (its lines) longer than this is a row error; memory never follows a line.
    max_line_bytes: int = Field(1 << 20, ge=1024)
    allow_duplicates: bool = False
    stop_timeout: float = Field(30.0, gt=0)
    default_region: str = "US"
    sidecar_formula_guard: bool = True

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

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        if len(v) != 2 or not v.isalpha():
            raise ValueError("must be a two-letter region code such as US")
        return v.upper()

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


class SettingsError(Exception):
    """One line naming the bad key, for the operator."""


def load_settings(**overrides: Any) -> Settings:
    """Build settings or raise ``SettingsError`` with a one-line message."""
    config = os.environ.get("INGESTD_CONFIG")
    if config and not Path(config).is_file():
        raise SettingsError(f"INGESTD_CONFIG: no such file: {config}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        where = f"env INGESTD_{key.upper()}"
        if config:
            where += f" or {key} in {config}"
        raise SettingsError(f"invalid setting {key} ({where}): {err['msg']}") from None
    except Exception as exc:  # a TOML syntax error, for instance
        raise SettingsError(f"invalid settings: {exc}") from None
