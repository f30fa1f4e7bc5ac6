"""A throwaway PostgreSQL cluster from the distribution's package (Debian: `postgresql`), for
running the Prefect server as production does (infra/compose.yaml) in the slow tests.

    with local_postgres() as pg:
        url = pg.database("prefect_1")   # postgresql+asyncpg://... for PREFECT_API_DATABASE_...
        pg.query("prefect_1", "select count(*) from flow_run")

Imported as `postgres` (tests/ is on sys.path). initdb refuses to run as root; as root the
cluster runs as the `postgres` user the package made.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from servers import free_port


def server_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    def __init__(self, bin_dir: Path, port: int):
        self.bin, self.port = bin_dir, port

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                               "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-tA",
                               "-c", sql], capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise RuntimeError(f"psql {sql!r}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def database(self, name: str) -> str:
        """A new database owned by the `prefect` role; its asyncpg URL."""
        self.psql(f"CREATE DATABASE {name} OWNER prefect")
        return f"postgresql+asyncpg://prefect:prefect@127.0.0.1:{self.port}/{name}"

    def query(self, database: str, sql: str) -> str:
        return self.psql(sql, database)


@contextlib.contextmanager
def local_postgres() -> Iterator[Postgres]:
    bin_dir = server_bin()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL server installed (Debian: apt install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    root.chmod(0o700)
    port = free_port()
    pg = Postgres(bin_dir, port)

    def ctl(*argv: str) -> None:
        proc = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            log = root / "pg.log"
            raise RuntimeError(f"{' '.join(argv)}: {proc.stdout}{proc.stderr}"
                               + (log.read_text() if log.exists() else ""))

    try:
        ctl(str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
            "-E", "UTF8")
        ctl(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "pg.log"), "-w",
            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200",
            "start")
        pg.psql("CREATE ROLE prefect LOGIN PASSWORD 'prefect'")
        yield pg
    finally:
        if (root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                ctl(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
