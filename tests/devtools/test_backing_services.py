"""Finding or starting PostgreSQL and Redis: environment URLs, local servers, embedded ones.

Runs against real servers and real processes. The local-server test needs PostgreSQL
on 127.0.0.1:5432 (user postgres, trust) and Redis on 127.0.0.1:6379 and is skipped
without them; everything else works on a machine with nothing installed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dj_database_url
import psycopg2
import pytest
import redis
from psycopg2 import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.backing_services import (
    BackingServiceError,
    BackingServices,
    ensure_backing_services,
)

REPO = Path(__file__).resolve().parents[2]


def quiet(line: str) -> None:
    pass


def redis_client(url: str) -> redis.Redis:
    """A client that reports a dead server at once instead of retrying with backoff."""
    return redis.Redis.from_url(url, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def local_servers_answer() -> bool:
    try:
        psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2
        ).close()
        redis_client("redis://127.0.0.1:6379/0").ping()
    except (psycopg2.Error, redis.RedisError):
        return False
    return True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query_one(database_url: str, query: str) -> object:
    with contextlib.closing(psycopg2.connect(database_url, connect_timeout=2)) as connection:
        with connection, connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchone()[0]


def execute(database_url: str, statement: str) -> None:
    with contextlib.closing(psycopg2.connect(database_url, connect_timeout=2)) as connection:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement)


def server_pids(data_dir: Path, redis_url: str) -> list[int]:
    postgres_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    redis_pid = redis_client(redis_url).info("server")["process_id"]
    return [postgres_pid, redis_pid]


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if is_alive(pid)]


@pytest.fixture(autouse=True)
def no_service_urls_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)


@pytest.fixture(scope="module")
def running_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackingServices]:
    """Servers that answer: the local ones where they run, embedded ones elsewhere."""
    with ensure_backing_services(tmp_path_factory.mktemp("services"), log=quiet) as services:
        yield services


def test_urls_from_the_environment_are_used_as_is(
    running_services: BackingServices, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    redis_url = running_services.redis_url.rsplit("/", 1)[0] + "/5"
    monkeypatch.setenv("DATABASE_URL", running_services.database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)

    services = ensure_backing_services(tmp_path, log=quiet)

    assert services.env() == {"DATABASE_URL": running_services.database_url, "REDIS_URL": redis_url}
    assert (services.database_source, services.redis_source) == ("env", "env")
    assert not services.owns_processes
    assert list(tmp_path.iterdir()) == []


def test_database_url_that_does_not_answer_raises_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = closed_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:hunter2@127.0.0.1:{port}/adaptrain")

    with pytest.raises(BackingServiceError) as raised:
        ensure_backing_services(tmp_path, log=quiet)

    message = str(raised.value)
    assert f"postgresql://postgres:***@127.0.0.1:{port}/adaptrain" in message
    assert "Connection refused" in message
    assert "hunter2" not in message
    assert list(tmp_path.iterdir()) == [], "fell back to an embedded server"


def test_redis_url_that_does_not_answer_raises_an_error_naming_it(
    running_services: BackingServices, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = closed_port()
    monkeypatch.setenv("DATABASE_URL", running_services.database_url)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")

    with pytest.raises(BackingServiceError, match=f"REDIS_URL=redis://127.0.0.1:{port}/0"):
        ensure_backing_services(tmp_path, log=quiet)
    assert list(tmp_path.iterdir()) == [], "fell back to an embedded server"


def test_non_postgresql_database_url_is_rejected_with_the_scheme_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///db.sqlite3")

    with pytest.raises(BackingServiceError, match="not a PostgreSQL URL \\(scheme 'sqlite'\\)"):
        ensure_backing_services(tmp_path, log=quiet)


@pytest.mark.skipif(
    not local_servers_answer(), reason="no PostgreSQL on 127.0.0.1:5432 or Redis on :6379"
)
def test_local_servers_are_used_and_a_missing_database_is_created(tmp_path: Path) -> None:
    database_name = f"adaptrain_test_{secrets.token_hex(4)}"
    lines: list[str] = []
    try:
        services = ensure_backing_services(tmp_path, database_name=database_name, log=lines.append)

        assert services.database_url == f"postgresql://postgres@127.0.0.1:5432/{database_name}"
        assert services.redis_url == "redis://127.0.0.1:6379/0"
        assert (services.database_source, services.redis_source) == ("local", "local")
        assert query_one(services.database_url, "SELECT current_database()") == database_name
        assert f'PostgreSQL: created database "{database_name}"' in lines
        assert not services.owns_processes
        assert list(tmp_path.iterdir()) == []
    finally:
        maintenance = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2
        )
        maintenance.autocommit = True
        with contextlib.closing(maintenance), maintenance.cursor() as cursor:
            cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(database_name)
                )
            )


def test_embedded_servers_start_answer_and_are_gone_after_stop(tmp_path: Path) -> None:
    services = ensure_backing_services(tmp_path, prefer_embedded=True, log=quiet)
    try:
        assert (services.database_source, services.redis_source) == ("embedded", "embedded")
        assert services.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert services.database_url.endswith("/adaptrain")
        assert dj_database_url.parse(services.database_url)["HOST"] == "127.0.0.1"
        assert query_one(services.database_url, "SELECT 1") == 1
        assert redis_client(services.redis_url).ping()
        pids = server_pids(tmp_path, services.redis_url)
    finally:
        services.stop()

    assert wait_until_gone(pids) == []
    with pytest.raises(psycopg2.OperationalError):
        query_one(services.database_url, "SELECT 1")
    with pytest.raises(redis.ConnectionError):
        redis_client(services.redis_url).ping()


def test_second_embedded_start_in_the_same_data_dir_reuses_the_cluster(tmp_path: Path) -> None:
    with ensure_backing_services(tmp_path, prefer_embedded=True, log=quiet) as first:
        execute(first.database_url, "CREATE TABLE marker AS SELECT 'kept' AS note")

    lines: list[str] = []
    with ensure_backing_services(tmp_path, prefer_embedded=True, log=lines.append) as second:
        assert query_one(second.database_url, "SELECT note FROM marker") == "kept"
    assert not any("initialising" in line for line in lines), lines


def test_embedded_servers_found_running_are_reused_and_left_running(tmp_path: Path) -> None:
    with ensure_backing_services(tmp_path, prefer_embedded=True, log=quiet) as owner:
        borrower = ensure_backing_services(tmp_path, prefer_embedded=True, log=quiet)

        assert borrower.env() == owner.env()
        assert (borrower.database_source, borrower.redis_source) == ("embedded", "embedded")
        assert not borrower.owns_processes
        borrower.stop()
        assert query_one(owner.database_url, "SELECT 1") == 1
        assert redis_client(owner.redis_url).ping()


def test_command_line_prints_urls_and_stops_what_it_started_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.backing_services", "--embedded",
         "--data-dir", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        printed = dict(process.stdout.readline().strip().split("=", 1) for _ in range(2))
        assert printed.keys() == {"DATABASE_URL", "REDIS_URL"}
        assert query_one(printed["DATABASE_URL"], "SELECT 1") == 1
        pids = server_pids(tmp_path, printed["REDIS_URL"])

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, stderr
    assert "PostgreSQL: stopping embedded server" in stderr
    assert wait_until_gone(pids) == []


def test_servers_started_by_a_process_are_stopped_when_it_exits_without_stop(
    tmp_path: Path,
) -> None:
    script = (
        "import sys\n"
        "from devtools.backing_services import ensure_backing_services\n"
        "import time; t0 = time.monotonic()\n"
        "services = ensure_backing_services(sys.argv[1], prefer_embedded=True, log=lambda l: print(round(time.monotonic() - t0, 2), l))\n"
        "print(services.redis_url)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    finished = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    print(finished.stdout)
    assert finished.returncode == 0, finished.stderr
    assert "PostgreSQL: stopping embedded server" in finished.stdout
    assert "Redis: stopping embedded server" in finished.stdout
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()
    (redis_url,) = [line for line in finished.stdout.splitlines() if line.startswith("redis://")]
    with pytest.raises(redis.ConnectionError):
        redis_client(redis_url).ping()


def test_importing_the_module_leaves_django_settings_unloaded() -> None:
    script = (
        "import sys, devtools.backing_services\n"
        "assert 'controlplane.settings' not in sys.modules, 'settings were imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)
