"""Service settings (pydantic-settings): TWOTOWER_* variables and a .env file, typed and validated; a bad value
stops start-up naming the variable; the CLI flags override both; direct construction reads no environment."""

from __future__ import annotations

import pytest

from serving.settings import PREFIX, READ, SCOPES, Settings, SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No TWOTOWER_* variable of the service and no .env file but the test's own."""
    for name in Settings.model_fields:
        monkeypatch.delenv(PREFIX + name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_and_direct_construction_read_no_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TWOTOWER_PORT", "9")
    (tmp_path / ".env").write_text("TWOTOWER_API_TOKEN=secret\n")
    settings = Settings(bundle="b")
    assert (settings.port, settings.host, settings.state_dir) == (8000, "127.0.0.1", "state")
    assert not settings.auth_enabled and settings.loopback and settings.max_body_bytes == 1 << 20


def test_values_are_typed(monkeypatch):
    for name, raw in {"PORT": "9001", "VERIFY": "no", "SEED_HISTORIES": "0", "METRICS_NEED_TOKEN": "YES",
                      "RETENTION_DAYS": "2.5", "DIVERSITY": "0.3", "SYNCHRONOUS": "normal", "NPROBE": "8",
                      "STORE": "redis://127.0.0.1:6379/2", "READ_TOKEN": "r"}.items():  # fmt: skip
        monkeypatch.setenv(PREFIX + name, raw)
    s = Settings.from_env()
    assert (s.port, s.verify, s.seed_histories, s.metrics_need_token) == (9001, False, False, True)
    assert (s.retention_days, s.diversity, s.synchronous) == (2.5, 0.3, "NORMAL")
    assert s.store == "redis://127.0.0.1:6379/2"
    assert s.load_kwargs()["search"] == {"nprobe": 8} and s.load_kwargs()["ranking"] == {"diversity": 0.3}
    assert s.tokens() == [("r", frozenset({READ}))] and s.auth_enabled


@pytest.mark.parametrize(
    "name, raw",
    [("PORT", "abc"), ("PORT", "70000"), ("VERIFY", "maybe"), ("MAX_K", "0"), ("RETENTION_DAYS", "nan"),
     ("SYNCHRONOUS", "OFF"), ("DIVERSITY", "1.5"), ("INTENT_BOOST", "-0.5"), ("STORE", "postgres://db/x"),
     ("MAX_BODY_BYTES", "1MB")],
)  # fmt: skip
def test_a_bad_value_names_the_variable(monkeypatch, name, raw):
    monkeypatch.setenv(PREFIX + name, raw)
    with pytest.raises(SettingsError, match=f"{PREFIX}{name}={raw!r}: "):
        Settings.from_env()


def test_a_bad_value_stops_start_up_naming_it(monkeypatch, capsys):
    from serving.__main__ import main

    monkeypatch.setenv("TWOTOWER_PORT", "abc")
    with pytest.raises(SystemExit) as stopped:
        main(["--bundle", "b"])
    assert stopped.value.code == 2 and "TWOTOWER_PORT='abc'" in capsys.readouterr().err


def test_dotenv_is_read_under_the_environment_and_the_flags(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("TWOTOWER_MAX_K=7\nTWOTOWER_PORT=1234\nTWOTOWER_THREADS=2\nOTHER_TOOL=x\n")
    monkeypatch.setenv("TWOTOWER_PORT", "4321")
    s = Settings.from_env(threads=3, host=None)  # None: a flag not given
    assert (s.max_k, s.port, s.threads, s.host) == (7, 4321, 3, "127.0.0.1")
    assert Settings.from_env(env_file=None).max_k == 1000
    (tmp_path / ".env").write_text("TWOTOWER_MAX_K=lots\n")
    with pytest.raises(SettingsError, match="TWOTOWER_MAX_K='lots'"):
        Settings.from_env()


def test_a_flag_overrides_a_bad_variable_and_is_checked_itself(monkeypatch):
    monkeypatch.setenv("TWOTOWER_PORT", "abc")
    assert Settings.from_env(port=9).port == 9
    with pytest.raises(SettingsError, match="port=70000"):
        Settings.from_env(port=70000)


def test_an_empty_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("TWOTOWER_HOST", "")
    monkeypatch.setenv("TWOTOWER_PORT", "")
    s = Settings.from_env()
    assert (s.host, s.port) == ("127.0.0.1", 8000)


def test_every_field_is_read_from_its_variable(monkeypatch):
    """The names are the contract: TWOTOWER_ + the field name, for every field."""
    for name, field in Settings.model_fields.items():
        value = "1" if field.annotation in (int, float, bool) else "x"
        if name == "synchronous":
            value = "EXTRA"
        elif name == "store":
            value = "redis://h:1/0"
        monkeypatch.setenv(PREFIX + name.upper(), value)
    s = Settings.from_env()
    changed = {name for name in Settings.model_fields if getattr(s, name) != getattr(Settings(), name)}
    assert changed == set(Settings.model_fields) - {
        "verify",
        "seed_histories",
        "threads",
    }  # "1": their default
    assert [scopes for _, scopes in s.tokens()] == [SCOPES, {READ}, {"write"}, {"admin"}]
