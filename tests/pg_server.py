"""A real PostgreSQL server for the tests: started once per test session on loopback.

Import the fixtures in a test module (``from pg_server import pg_server, pg_url``).
``pg_server`` runs Debian's ``initdb``/``pg_ctl`` (``/usr/lib/postgresql/*/bin``) in a
temporary directory, listening on 127.0.0.1 at a free port (and a unix socket in the
data directory), trust authentication, and stops it at the end of the session. As root
the server runs as the ``postgres`` user (initdb refuses root). ``pg_url`` creates a
fresh, empty database per test and yields its SQLAlchemy URL.

When the binaries or the driver are missing, or the server does not start, the tests
that use it FAIL with a message saying how to install them: they are never skipped.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = ("install the server and the driver: `apt-get install -y postgresql` "
                "(as root; `make test` does it when it can) and "
                "`.venv/bin/pip install psycopg2-binary`")


@dataclass
class PgServer:
    """A running server: where it listens and how to reach it."""

    bindir: Path
    datadir: Path
    port: int
    user: str = "postgres"

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` maintenance database."""
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL of database ``dbname`` on this server."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """Create a fresh database and return its SQLAlchemy URL."""
        import psycopg2

        name = f"tp_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _find_bindir() -> Path:
    env = os.environ.get("TRACTPATCH_PG_BINDIR")
    candidates = [env] if env else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found in "
                f"/usr/lib/postgresql/*/bin or $TRACTPATCH_PG_BINDIR; {INSTALL_HINT}",
                pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """Prefix ``cmd`` so that it runs as a non-root user (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and there is no `postgres` user to run the "
                    f"server as; {INSTALL_HINT}", pytrace=False)
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(map(_quote, cmd))]


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(str(s))


def _run(cmd: list[str], what: str) -> None:
    p = subprocess.run(_as_server_user(cmd), capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        pytest.fail(f"PostgreSQL {what} failed (exit {p.returncode}): "
                    f"{' | '.join(tail)}; {INSTALL_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server on 127.0.0.1 for the whole test session (see module doc)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail(f"the PostgreSQL driver psycopg2 is not installed; {INSTALL_HINT}",
                    pytrace=False)
    bindir = _find_bindir()
    base = Path(tempfile.mkdtemp(prefix="tractpatch-pg-"))
    datadir = base / "data"
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres") if _has_user("postgres") else None
        if pw is not None:
            os.chown(base, pw.pw_uid, pw.pw_gid)
    os.chmod(base, 0o755)
    port = _free_port()
    _run([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
          "-E", "UTF8", "--no-sync"], "initdb")
    opts = (f"-c listen_addresses=127.0.0.1 -c port={port} "
            f"-c unix_socket_directories={datadir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
    _run([str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts, "-l",
          str(base / "server.log"), "-w", "-t", "60", "start"], "server start")
    server = PgServer(bindir, datadir, port)
    try:
        yield server
    finally:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(datadir),
                                        "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def pg_url(pg_server) -> str:
    """SQLAlchemy URL of a fresh, empty database on the session's server."""
    return pg_server.create_database()
