import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from robogpt_video.config import ConfigError, Settings, load_settings

BRIEF_ENV = [
    "STREAM_TIMEOUT_SECONDS",
    "MAX_CONCURRENT_STREAMS",
    "RECORDING_RETENTION_DAYS",
    "LOG_LEVEL",
    "SERVER_PORT",
    "SERVER_DEBUG",
    "ROBOGPT_CONFIG",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in BRIEF_ENV:
        monkeypatch.delenv(name, raising=False)
    import os

    for name in list(os.environ):
        if name.startswith("ROBOGPT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no ./config.yaml unless a test writes one


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_are_the_briefs():
    s = load_settings()
    assert (s.streams.timeout_seconds, s.streams.max_concurrent, s.streams.max_buffer_frames) == (
        300,
        50,
        30,
    )
    assert s.recording.enabled and s.recording.fps == 30 and s.recording.retention_days == 7
    assert s.recording.directory == Path("recordings")
    assert (s.cleanup.interval_seconds, s.cleanup.schedule_time) == (60, "03:00")
    assert (s.server.host, s.server.port, s.server.debug, s.server.cors_enabled) == (
        "0.0.0.0",
        5000,
        False,
        True,
    )
    assert s.server.max_frame_bytes == 10 * 1024 * 1024
    assert s.logging.level == "INFO" and s.logging.file == Path("logs/server.log")


def test_shipped_config_yaml_loads_and_matches_defaults():
    shipped = load_settings(REPO / "config.yaml")
    assert shipped.model_dump() == Settings().model_dump()


def test_brief_config_block_loads_verbatim(tmp_path):
    """The config.yaml shown in the brief, including codec: mp4v, is accepted as is."""
    brief = """
streams:
  timeout_seconds: 300
  max_concurrent: 50
  max_buffer_frames: 30
recording:
  enabled: true
  codec: mp4v
  fps: 30
  retention_days: 7
cleanup:
  interval_seconds: 60
  schedule_time: "03:00"
server:
  host: 0.0.0.0
  port: 5000
  debug: false
  cors_enabled: true
  max_frame_size_mb: 10
logging:
  level: INFO
"""
    s = load_settings(write(tmp_path, brief))
    assert s.recording.codec == "mp4v"


def test_default_file_and_ROBOGPT_CONFIG(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("server: {port: 6001}\n")
    assert load_settings().server.port == 6001
    other = write(tmp_path, {"server": {"port": 6002}})
    monkeypatch.setenv("ROBOGPT_CONFIG", str(other))
    assert load_settings().server.port == 6002


def test_precedence_flags_over_prefixed_env_over_brief_env_over_yaml(tmp_path, monkeypatch):
    path = write(tmp_path, {"server": {"port": 7000, "debug": False}, "logging": {"level": "INFO"}})
    assert load_settings(path).server.port == 7000
    monkeypatch.setenv("SERVER_PORT", "7001")
    monkeypatch.setenv("SERVER_DEBUG", "true")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    s = load_settings(path)
    assert (s.server.port, s.server.debug, s.logging.level) == (7001, True, "DEBUG")
    monkeypatch.setenv("ROBOGPT_SERVER__PORT", "7002")
    assert load_settings(path).server.port == 7002
    assert load_settings(path, {"server": {"port": 7003}}).server.port == 7003
    # keys not overridden keep the YAML / default value
    assert load_settings(path, {"server": {"port": 7003}}).server.host == "0.0.0.0"


@pytest.mark.parametrize(
    "var, value, section, key, expected",
    [
        ("STREAM_TIMEOUT_SECONDS", "600", "streams", "timeout_seconds", 600),
        ("MAX_CONCURRENT_STREAMS", "100", "streams", "max_concurrent", 100),
        ("RECORDING_RETENTION_DAYS", "14", "recording", "retention_days", 14),
        ("LOG_LEVEL", "DEBUG", "logging", "level", "DEBUG"),
        ("SERVER_PORT", "8080", "server", "port", 8080),
        ("SERVER_DEBUG", "true", "server", "debug", True),
        ("ROBOGPT_CLEANUP__INTERVAL_SECONDS", "5", "cleanup", "interval_seconds", 5),
        ("ROBOGPT_RECORDING__DIRECTORY", "/data/rec", "recording", "directory", Path("/data/rec")),
    ],
)
def test_each_environment_variable(monkeypatch, var, value, section, key, expected):
    monkeypatch.setenv(var, value)
    assert getattr(getattr(load_settings(), section), key) == expected


@pytest.mark.parametrize(
    "data, key_path",
    [
        ({"streams": {"timeout_secs": 5}}, "streams.timeout_secs"),
        ({"bogus": {}}, "bogus"),
        ({"streams": {"max_concurrent": 0}}, "streams.max_concurrent"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"port": "eighty"}}, "server.port"),
        ({"server": {"header_timeout_seconds": 0}}, "server.header_timeout_seconds"),
        ({"recording": {"codec": "divx"}}, "recording.codec"),
        ({"cleanup": {"schedule_time": "25:00"}}, "cleanup.schedule_time"),
        ({"logging": {"level": "LOUD"}}, "logging.level"),
    ],
)
def test_bad_keys_and_values_name_the_key_path(tmp_path, data, key_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data))
    assert f"  {key_path}:" in str(info.value)


def test_bad_environment_value_names_the_key(monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "lots")
    with pytest.raises(ConfigError, match="streams.max_concurrent"):
        load_settings()


@pytest.mark.parametrize(
    "text, message",
    [("streams: [1, 2", "not valid YAML"), ("- a\n- b\n", "must hold a mapping")],
)
def test_broken_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_cli_refuses_to_start_with_the_key_path(tmp_path):
    path = write(tmp_path, {"server": {"prot": 1}})
    result = subprocess.run(
        [sys.executable, "-m", "robogpt_video", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "server.prot: unknown key" in result.stderr


def test_two_users_with_one_token_are_refused_without_showing_it():
    users = [{"name": "a", "token": "shared-token-77"}, {"name": "b", "token": "shared-token-77"}]
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"auth": {"users": users}})
    assert "users 'a' and 'b' have the same token" in str(refused.value)
    assert "shared-token-77" not in str(refused.value)


def test_environment_json_that_does_not_parse_is_a_config_error(monkeypatch):
    monkeypatch.setenv("ROBOGPT_AUTH__USERS", '[{"name": "a", "token": "half-a-secret')
    with pytest.raises(ConfigError) as refused:
        load_settings(None)
    assert "auth" in str(refused.value)
    assert "half-a-secret" not in str(refused.value)


@pytest.mark.parametrize("url", ["http://:redis-pass-5b21@10.0.0.9:6379/0",
                                 "redis//user:redis-pass-5b21@10.0.0.9"])
def test_a_bad_redis_url_is_refused_without_showing_its_password(monkeypatch, url):
    monkeypatch.setenv("ROBOGPT_CLUSTER__REDIS_URL", url)
    with pytest.raises(ConfigError) as refused:
        load_settings(None)
    assert "cluster.redis_url" in str(refused.value)
    assert "redis-pass-5b21" not in str(refused.value)
