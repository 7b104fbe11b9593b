"""The production profile refuses insecure settings and says what to fix."""

import os
import subprocess
import sys

from controlplane.settings import DEVELOPMENT_SECRET_KEY, check_production_settings

GOOD = {
    "secret_key": "k3Jd9_xQ2mZ7vB1nR8tY4wL6pA0sF5hG-cE",
    "debug": False,
    "allowed_hosts": ["train.example.org"],
    "database_url": "postgresql://u@db/x",
    "redis_url": "redis://r:6379/0",
}


def _import_settings(env_overrides):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL")
    }
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", "import controlplane.settings"],
        env=env,
        capture_output=True,
        text=True,
    )


def test_safe_production_settings_have_no_problems():
    assert check_production_settings(**GOOD) == []


def test_each_insecure_default_is_named():
    problems = check_production_settings(
        secret_key=DEVELOPMENT_SECRET_KEY,
        debug=True,
        allowed_hosts=["*"],
        database_url=None,
        redis_url=None,
    )
    text = "\n".join(problems)
    for word in ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL"):
        assert word in text


def test_short_secret_key_is_refused():
    problems = check_production_settings(**{**GOOD, "secret_key": "short"})
    assert any("SECRET_KEY" in p for p in problems)


def test_production_profile_refuses_to_start_on_defaults():
    result = _import_settings({"DJANGO_ENV": "production"})
    assert result.returncode != 0
    assert "Refusing to start with DJANGO_ENV=production" in result.stderr
    assert "SECRET_KEY is not set" in result.stderr


def test_production_profile_starts_with_safe_settings():
    result = _import_settings(
        {
            "DJANGO_ENV": "production",
            "SECRET_KEY": GOOD["secret_key"],
            "DEBUG": "false",
            "ALLOWED_HOSTS": "train.example.org",
            "DATABASE_URL": GOOD["database_url"],
            "REDIS_URL": GOOD["redis_url"],
        }
    )
    assert result.returncode == 0, result.stderr


def test_bad_boolean_is_reported_with_its_name():
    result = _import_settings({"DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DEBUG='maybe' is not a boolean" in result.stderr
