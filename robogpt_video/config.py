"""Typed settings: built-in defaults, then YAML, then environment, then CLI overrides.

Every key of the brief's ``config.yaml`` lives here with its default. Unknown keys
and bad values refuse to start with a message that names the key path.
"""

from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    SettingsError,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_CONFIG_FILE = "config.yaml"
CONFIG_ENV = "ROBOGPT_CONFIG"

#: The brief's environment variables and the key each one sets.
BRIEF_ENV = {
    "STREAM_TIMEOUT_SECONDS": ("streams", "timeout_seconds"),
    "MAX_CONCURRENT_STREAMS": ("streams", "max_concurrent"),
    "RECORDING_RETENTION_DAYS": ("recording", "retention_days"),
    "LOG_LEVEL": ("logging", "level"),
    "SERVER_PORT": ("server", "port"),
    "SERVER_DEBUG": ("server", "debug"),
}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StreamsSettings(_Section):
    """Limits and timeouts of live streams."""

    timeout_seconds: float = Field(300, gt=0, description="Inactivity timeout")
    max_concurrent: int = Field(50, ge=1, description="Maximum concurrent streams")
    max_buffer_frames: int = Field(
        30, ge=1, le=10_000, description="Recent frames recorded per stream (time, size, resolution)"
    )
    max_viewers: int = Field(1000, ge=1, description="Viewers per stream")
    resend_seconds: float = Field(
        1.0, gt=0, description="Re-send the last frame this often to viewers of a quiet stream"
    )
    viewer_stall_seconds: float = Field(
        10.0, gt=0, description="Close a viewer whose socket accepted nothing for this long"
    )


class RecordingSettings(_Section):
    """Where and how streams are written to disk."""

    enabled: bool = True
    codec: Literal["mjpeg", "mp4v", "h264"] = "mjpeg"
    fps: float = Field(30, gt=0, le=1000, description="Maximum recorded frame rate")
    retention_days: float = Field(7, ge=0, description="Days to keep recordings (0 = forever)")
    directory: Path = Path("recordings")
    segment_seconds: float = Field(300, gt=0, description="Start a new file this often")
    idle_close_seconds: float = Field(10, gt=0, description="Close a segment after this idle time")
    queue_frames: int = Field(120, ge=1, description="Frames queued per recorder before drops")
    max_queue_mb: float = Field(
        256, gt=0, description="JPEG MiB queued for the disk by all streams together before drops"
    )
    max_segments_per_minute: int = Field(
        6, ge=1, description="Segments a stream may open in any 60 s; past it, frames of "
        "another resolution than the open segment's are not recorded"
    )
    stall_seconds: float = Field(
        5, gt=0, description="/health is degraded while frames wait this long for a write to end"
    )
    health_window_seconds: float = Field(
        60, gt=0, description="/health reports frames the disk queue dropped this recently"
    )
    max_total_gb: float = Field(0, ge=0, description="Cap on all recordings (0 = off)")
    min_free_gb: float = Field(0, ge=0, description="Keep this much disk free (0 = off)")


class CleanupSettings(_Section):
    """When the background sweepers run."""

    interval_seconds: float = Field(60, gt=0)
    schedule_time: str = "03:00"

    @field_validator("schedule_time")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
        if not match or int(match[1]) > 23 or int(match[2]) > 59:
            raise ValueError("must be HH:MM (24-hour), e.g. '03:00'")
        return f"{int(match[1]):02d}:{match[2]}"


class ClipsSettings(_Section):
    """H.264 clips of recordings, made on request (docs/clips.md)."""

    directory: Path | None = Field(
        None, description="Cache of finished clips; empty: .clips inside recording.directory"
    )
    max_jobs: int = Field(1, ge=1, le=64, description="Clips encoded at the same time")
    max_queued: int = Field(16, ge=1, description="Clips waiting for a turn; more get 503")
    max_seconds: float = Field(3600, gt=0, description="Longest range one clip may cover")
    cache_mb: float = Field(
        2048, ge=0, description="MiB of finished clips kept; the oldest go first"
    )
    encoder_threads: int = Field(2, ge=1, le=64, description="libx264 threads per clip")

    @field_validator("directory", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value


class ServerSettings(_Section):
    """HTTP listener."""

    host: str = "0.0.0.0"
    port: int = Field(5000, ge=0, le=65535)
    debug: bool = False
    cors_enabled: bool = True
    cors_origins: list[str] = Field(
        ["*"], description="Origins whose pages may use the API ('*': any; docs/security.md)"
    )
    max_frame_size_mb: float = Field(10, gt=0, le=1024)
    max_frame_memory_mb: float = Field(
        512, gt=0, description="MiB of JPEG frames held at once (latest frames, uploads being "
        "read, frames queued or being written to disk); past it the oldest queued frames drop"
    )
    max_connections: int = Field(
        10_000, ge=1, description="Open connections in all; more are refused with 503"
    )
    max_connections_per_address: int = Field(
        1_000, ge=1, description="Open connections from one client address (proxies excepted)"
    )
    send_buffer_kb: int = Field(
        128, ge=0, description="SO_SNDBUF of viewer sockets; 0 leaves the kernel's auto-tuning"
    )
    header_timeout_seconds: float = Field(
        30, gt=0,
        description="Close a new connection whose request line and headers (or TLS "
        "handshake) take longer than this",
    )
    body_timeout_seconds: float = Field(
        30, gt=0,
        description="End a request whose body sends no byte for this long (408); a "
        "WebSocket silent this long is pinged and closed without a pong",
    )
    keepalive_timeout_seconds: float = Field(
        30, gt=0,
        description="Close a kept-alive connection that starts no new request within "
        "this long of its last response",
    )
    tls_certfile: Path | None = Field(
        None, description="PEM certificate chain: with tls_keyfile, serve HTTPS and WSS"
    )
    tls_keyfile: Path | None = Field(
        None, validate_default=True, description="PEM private key of tls_certfile, unencrypted"
    )

    @field_validator("tls_keyfile")
    @classmethod
    def _tls_pair(cls, keyfile: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_certfile" not in info.data:  # tls_certfile itself is invalid
            return keyfile
        certfile = info.data["tls_certfile"]
        if keyfile is None and certfile is not None:
            raise ValueError("required when server.tls_certfile is set")
        if keyfile is not None and certfile is None:
            raise ValueError("set server.tls_certfile too (both or neither)")
        return keyfile

    @property
    def max_frame_bytes(self) -> int:
        """The frame size limit in bytes."""
        return int(self.max_frame_size_mb * 1024 * 1024)


class LoggingSettings(_Section):
    """Console and rotating file logs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    file: Path | None = Path("logs/server.log")
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    backup_count: int = Field(5, ge=0)
    repeat_seconds: float = Field(
        10, ge=0, description="Collapse repeats of a log line within this window (0 = off)"
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value


_SHA256_HEX = r"^[0-9a-fA-F]{64}$"
#: Config keys whose values are secrets: never echoed in a configuration error. ``jwt``:
#: its public_key could be a private key pasted by mistake; ``redis_url``: it may hold
#: Redis's password (redis://:password@host).
SECRET_KEYS = frozenset({"token", "token_sha256", "password", "password_sha256", "users", "jwt",
                         "session_secret", "redis_url"})
SESSION_SECRET_CHARS = 32  # the shortest auth.session_secret accepted


class PermissionSettings(_Section):
    """One action on the streams whose names match a glob."""

    action: Literal["publish", "view", "playback", "admin", "metrics"]
    streams: str = Field("*", min_length=1, description="Glob of stream names, e.g. robot7_*")


class UserSettings(_Section):
    """A user: a name, its secrets (any of them proves it) and its permissions.

    The user named ``any`` is the anonymous one: its permissions apply to requests
    without credentials, and it has no secret.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[^:\s]+$")
    token: SecretStr | None = None
    token_sha256: str | None = Field(None, pattern=_SHA256_HEX)
    password: SecretStr | None = None
    password_sha256: str | None = Field(None, pattern=_SHA256_HEX)
    permissions: list[PermissionSettings] = []

    @model_validator(mode="after")
    def _secrets(self) -> "UserSettings":
        has_secret = any(
            v is not None for v in (self.token, self.token_sha256, self.password, self.password_sha256)
        )
        if self.name == "any" and has_secret:
            raise ValueError("the anonymous user 'any' takes no token or password")
        if self.name != "any" and not has_secret:
            raise ValueError(
                f"user '{self.name}' needs a token, token_sha256, password or password_sha256"
            )
        return self


class JwtSettings(_Section):
    """Fleet identity: JWTs signed by an identity provider (docs/security.md, JWT).

    On when the section is present; it then needs exactly one of ``jwks_url``,
    ``public_key`` and ``public_key_file``.
    """

    jwks_url: str | None = Field(
        None, description="JWKS endpoint: https://, or http:// to a loopback address"
    )
    public_key: str | None = Field(None, description="PEM public key text")
    public_key_file: Path | None = Field(None, description="File holding a PEM public key")
    issuer: str | None = Field(None, min_length=1, description="Required iss claim, if set")
    audience: str | None = Field(None, min_length=1, description="Required aud claim, if set")
    algorithms: list[str] = Field(["RS256", "ES256", "EdDSA"], min_length=1)
    claim: str = Field("permissions", min_length=1, description="Claim holding the permissions")
    name_claim: str = Field("sub", min_length=1, description="Claim holding the user name")
    leeway_seconds: float = Field(30, ge=0, le=3600, description="Clock skew allowed on exp/nbf")
    jwks_cache_seconds: float = Field(
        300, gt=0, le=86400, description="Use fetched JWKS keys this long before fetching again"
    )

    _key: Any = PrivateAttr(None)  # the public key loaded from public_key or public_key_file

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an https:// URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError(
                "must be https:// (plain http only to a loopback address: anyone on the "
                "path could swap the keys)"
            )
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, values: list[str]) -> list[str]:
        from .jwt_auth import SUPPORTED_ALGORITHMS

        for value in values:
            if value.lower() == "none":
                raise ValueError("'none' would accept unsigned tokens: never allowed")
            if value.upper().startswith("HS"):
                raise ValueError(
                    f"{value} is a shared-secret algorithm: tokens are checked with public "
                    "keys only (a public key taken as an HMAC secret is a known forgery)"
                )
            if value not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"{value!r} is not one of {', '.join(SUPPORTED_ALGORITHMS)}")
        return values

    @model_validator(mode="after")
    def _one_key_source(self) -> "JwtSettings":
        from .jwt_auth import algorithms_for, load_public_key

        given = [name for name in ("jwks_url", "public_key", "public_key_file")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "needs exactly one of jwks_url, public_key, public_key_file"
                + (f" (has {', '.join(given)})" if given else "")
            )
        if self.public_key is not None:
            where, pem = "public_key", self.public_key
        elif self.public_key_file is not None:
            where = f"public_key_file {self.public_key_file}"
            try:
                pem = self.public_key_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise ValueError(f"cannot read {where}: {reason}") from None
        else:
            return self
        try:
            key = load_public_key(pem)
        except ValueError as exc:
            raise ValueError(f"{where} {exc}") from None
        fitting = algorithms_for(key)
        if not fitting & set(self.algorithms):
            raise ValueError(
                f"none of algorithms {self.algorithms} fits the {type(key).__name__} in {where} "
                f"(it takes {', '.join(sorted(fitting))})"
            )
        self._key = key
        return self

    def public_key_object(self):
        """The public key of ``public_key``/``public_key_file`` (None with ``jwks_url``)."""
        return self._key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthSettings(_Section):
    """Access control: off while no user and no JWT is configured (docs/security.md)."""

    users: list[UserSettings] = []
    realm: str = Field("robogpt-video", pattern=r'^[^"\\]+$', description="Basic auth realm")
    max_failures_per_minute: int = Field(
        10, ge=0, description="Failed authentications per client address a minute (0 = no limit)"
    )
    max_refused_publishes_per_minute: int = Field(
        600, ge=0, description="Refused publishes per client address a minute (0 = no limit)"
    )
    trusted_proxies: list[str] = Field(
        [], description="Addresses or networks whose X-Forwarded-For is believed"
    )
    session_hours: float = Field(12, gt=0, description="Lifetime of a dashboard sign-in")
    session_secret: SecretStr | None = Field(
        None, description="Key of the dashboard's session tokens, the same on every node and "
        "worker (unset: shared through cluster.redis_url, or made at start)"
    )
    jwt: JwtSettings | None = Field(None, description="Accept JWTs (off while absent)")

    @field_validator("users")
    @classmethod
    def _unique(cls, users: list[UserSettings]) -> list[UserSettings]:
        names = [user.name for user in users]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"user names must be unique: {', '.join(repeated)}")
        # One token standing for two users would be either of them: refuse it (by
        # digest, so no token is compared or shown in clear).
        owners: dict[bytes, str] = {}
        for user in users:
            digests = set()
            if user.token is not None:
                digests.add(hashlib.sha256(user.token.get_secret_value().encode()).digest())
            if user.token_sha256:
                digests.add(bytes.fromhex(user.token_sha256))
            for token_digest in digests:
                if token_digest in owners:
                    raise ValueError(
                        f"users '{owners[token_digest]}' and '{user.name}' have the same token"
                    )
                owners[token_digest] = user.name
        return users

    @field_validator("session_secret", mode="before")
    @classmethod
    def _long_secret(cls, value: Any) -> Any:
        if value in ("", None):  # ROBOGPT_AUTH__SESSION_SECRET= (compose without one)
            return None
        if isinstance(value, str) and len(value) < SESSION_SECRET_CHARS:
            raise ValueError(
                f"must be at least {SESSION_SECRET_CHARS} characters, e.g. the output of "
                "python -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            ipaddress.ip_network(value, strict=False)  # ValueError names the bad one
        return values

    @property
    def enabled(self) -> bool:
        """Whether any credential is checked at all."""
        return self.jwt is not None or any(user.name != "any" for user in self.users)


_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("yaml_path", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file chosen by :func:`load_settings`."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _yaml_path.get()
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            # Not str(exc): it quotes the offending line, which may hold a secret.
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            what = ", ".join(filter(None, (getattr(exc, "context", None),
                                           getattr(exc, "problem", None)))) or "parse error"
            raise ConfigError(f"config file {path} is not valid YAML{where}: {what}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        return data


class _BriefEnvSource(PydanticBaseSettingsSource):
    """The brief's unprefixed environment variables, e.g. ``SERVER_PORT``."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, dict[str, str]] = {}
        for name, (section, key) in BRIEF_ENV.items():
            value = os.environ.get(name)
            if value is not None and value != "":
                data.setdefault(section, {})[key] = value
        return data


class ClusterSettings(_Section):
    """Nodes sharing streams through Redis (docs/cluster.md). Off while redis_url is empty."""

    redis_url: str = Field(
        "", description="redis://, rediss:// or unix:// URL; empty: one process, no Redis"
    )
    node_name: str = Field(
        "", max_length=200, description="This node's name in Redis; empty: host:port at start"
    )
    advertise_url: str = Field(
        "", description="How other nodes reach this one (http://host:port), for recordings "
        "on other nodes; empty: the address the server bound (docs/cluster.md)"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        value = value.strip()
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix:// (or be empty)")
        return value

    @property
    def enabled(self) -> bool:
        """Streams are shared through Redis."""
        return bool(self.redis_url)


class Settings(BaseSettings):
    """All configuration of one server process."""

    model_config = SettingsConfigDict(
        env_prefix="ROBOGPT_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    streams: StreamsSettings = StreamsSettings()
    recording: RecordingSettings = RecordingSettings()
    cleanup: CleanupSettings = CleanupSettings()
    clips: ClipsSettings = ClipsSettings()
    server: ServerSettings = ServerSettings()
    logging: LoggingSettings = LoggingSettings()
    auth: AuthSettings = AuthSettings()
    cluster: ClusterSettings = ClusterSettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # Earlier sources win: CLI overrides > ROBOGPT_* > brief names > YAML > defaults.
        return (
            init_settings,
            env_settings,
            _BriefEnvSource(settings_cls),
            _YamlSource(settings_cls),
        )


def default_config_path() -> Path | None:
    """``$ROBOGPT_CONFIG`` if set, else ``./config.yaml`` if it exists, else none."""
    chosen = os.environ.get(CONFIG_ENV)
    if chosen:
        return Path(chosen)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" (config file {path}, environment and flags)" if path else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        shown = error.get("input")
        if SECRET_KEYS & {str(part) for part in error["loc"]} or isinstance(shown, (dict, list)):
            lines.append(f"  {key}: {message}")  # the input may be or hold a secret
        else:
            lines.append(f"  {key}: {message} (got {shown!r})")
    return "\n".join(lines)


def load_settings(
    config_path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> Settings:
    """Build settings from a YAML file (or the default one), the environment and overrides."""
    path = Path(config_path) if config_path is not None else default_config_path()
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    token = _yaml_path.set(path)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except SettingsError as exc:  # e.g. ROBOGPT_AUTH__USERS that is not JSON
        raise ConfigError(f"invalid configuration: {exc}") from None
    finally:
        _yaml_path.reset(token)
