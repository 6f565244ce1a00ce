"""A throw-away PostgreSQL server for tests: `initdb` a cluster in a temporary folder, start `postgres`
on 127.0.0.1 and a free port, yield a SQLAlchemy URI of an empty database, stop and delete it all on
exit. The binaries are looked up on PATH and in Debian's /usr/lib/postgresql/<version>/bin, and
installed with apt-get (Debian's `postgresql` package) when missing and we are root."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from support.ui_check import free_port

TOOLS = ("initdb", "pg_ctl", "psql")


def postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and psql, installing Debian's package if needed and possible."""
    for attempt in range(2):
        found = shutil.which("initdb")
        candidates = [Path(found).parent] if found else []
        candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
        for folder in candidates:
            if all((folder / tool).exists() for tool in TOOLS):
                return folder
        if attempt == 0 and os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False, timeout=600,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return None


def _as_user() -> tuple[list[str], str | None]:
    """PostgreSQL refuses to run as root: as root, run it as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
    raise RuntimeError("running as root and no `postgres` or `nobody` user to run PostgreSQL as")


@contextlib.contextmanager
def postgres_database(name: str = "mlflow", start_timeout_s: int = 60) -> Iterator[str]:
    """postgresql+psycopg2://grr@127.0.0.1:<port>/<name>, running until the context ends."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL's initdb/pg_ctl/psql are not installed and cannot be installed "
                                "here (not root, or no apt-get)")
    prefix, user = _as_user()
    folder = Path(tempfile.mkdtemp(prefix="grr-coca-pg-"))  # not under pytest's root-only tmp_path
    if user:
        shutil.chown(folder, user)
    data, port = folder / "data", free_port()
    run = lambda *cmd, **kw: subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True,  # noqa: E731
                                            text=True, **kw)
    try:
        run(bin_dir / "initdb", "-D", data, "-U", "grr", "--auth=trust", "-E", "UTF8", timeout=120)
        run(bin_dir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", start_timeout_s,
            "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "start", timeout=start_timeout_s + 10)
        try:
            run(bin_dir / "psql", "-h", "127.0.0.1", "-p", port, "-U", "grr", "-d", "postgres",
                "-c", f"CREATE DATABASE {name}", timeout=60)
            yield f"postgresql+psycopg2://grr@127.0.0.1:{port}/{name}"
        finally:
            subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
