"""Settings: one object from the environment and the CLI's flags; a bad value is one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, load_settings


def test_bad_settings_are_one_line_naming_the_variable_and_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAVIAR_OPTUNA_STORAGE", "redis")
    with pytest.raises(SystemExit, match=r"^caviar: CAVIAR_OPTUNA_STORAGE: Input should be 'journal' or 'database' \(got 'redis'\)$"):
        load_settings()
    monkeypatch.setenv("CAVIAR_OPTUNA_STORAGE", "database")
    monkeypatch.setenv("CAVIAR_QUOTA_ACTIVE_STUDIES", "eight")
    with pytest.raises(SystemExit, match=r"^caviar: CAVIAR_QUOTA_ACTIVE_STUDIES: Input should be a valid integer"):
        load_settings()
    monkeypatch.setenv("CAVIAR_QUOTA_ACTIVE_STUDIES", "3")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    s = load_settings(data_dir="/tmp/caviar-settings-test")
    assert (s.optuna_storage, s.quota_active_studies, s.ray_address) == ("database", 3, "http://10.0.0.5:8265")
    assert s.database_url == "sqlite:////tmp/caviar-settings-test/caviar.db" and s.dashboard_url == s.ray_address
    assert load_settings(ray_address="http://other:1").ray_address == "http://other:1"  # a flag beats the environment
    assert "CAVIAR_QUOTA_ACTIVE_STUDIES" in os.environ  # settings read the environment, never write it


def test_settings_are_frozen_and_the_ray_token_comes_from_the_environment_or_ray_s_file(monkeypatch: pytest.MonkeyPatch,
                                                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    s = load_settings(data_dir=tmp_path)
    assert s.ray_auth_token is not None and s.ray_auth_token.get_secret_value() == "from-env"
    assert "from-env" not in repr(s)  # a secret is not printed
    with pytest.raises(ValidationError):
        s.max_resumes = 5  # type: ignore[misc]
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-file\n")
    assert Settings(data_dir=tmp_path).ray_auth_token.get_secret_value() == "from-file"  # type: ignore[union-attr]


def test_caviar_serve_with_a_bad_value_says_so_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    caviar = str(Path(sys.executable).parent / "caviar")
    env = {**os.environ, "CAVIAR_DATA_DIR": str(tmp_path), "CAVIAR_READ_CACHE_S": "half a second"}
    r = subprocess.run([caviar, "serve", "--port", "1"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "caviar: CAVIAR_READ_CACHE_S: Input should be a valid number, unable to parse string as a number (got 'half a second')"]


def test_the_cli_makes_ray_s_token_private_or_narrows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stat

    from service.cli import _private_ray_token

    monkeypatch.setenv("HOME", str(tmp_path))
    _private_ray_token()
    token = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    first = token.read_text()
    token.chmod(0o644)
    _private_ray_token()  # an existing token is kept, only narrowed
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == first


def test_the_dispatcher_lease_outlasts_its_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease shorter than a few ticks would lapse between renewals: two API processes would take turns."""
    assert load_settings().dispatch_lease_s == 15.0
    assert load_settings(dispatch_interval_s=10).dispatch_lease_s == 30.0  # default: 3 ticks when longer than 15 s
    monkeypatch.setenv("CAVIAR_DISPATCH_LEASE_S", "2")
    with pytest.raises(SystemExit, match=r"^caviar: CAVIAR_DISPATCH_LEASE_S: Value error, must be at least 3 dispatcher ticks "
                                         r"\(3 x CAVIAR_DISPATCH_INTERVAL_S = 3 s\), or the lease lapses between renewals \(got '2'\)$"):
        load_settings()
    monkeypatch.setenv("CAVIAR_DISPATCH_LEASE_S", "3")
    assert load_settings().dispatch_lease_s == 3.0
