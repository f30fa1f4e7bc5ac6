"""Which code is running: the version and the exact revision, recorded in the lake's lineage
(every manifest's `code_version`) and printed by `flywheel --version`.

In a git checkout the revision is the commit, with `+dirty` when tracked files differ from it;
installed from a wheel (no checkout), it is the package version plus a hash of the installed
source, so two installs of different code never report the same revision.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from flywheel import __version__

PACKAGE = Path(__file__).resolve().parent


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_hash(root: Path = PACKAGE) -> str:
    """sha256 over the path and bytes of every Python file under `root` (the installed package,
    which holds flows, tasks and kernels too), 12 hex digits."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@functools.cache
def code_revision() -> str:
    """`<version>+g<commit>` (and `.dirty`) in a git checkout whose tree holds this package;
    else `<version>+src<hash of the installed source>`."""
    top = _git("rev-parse", "--show-toplevel", cwd=PACKAGE)
    if top and (Path(top) / "flywheel" / "__init__.py").resolve() == PACKAGE / "__init__.py":
        commit = _git("rev-parse", "--short=12", "HEAD", cwd=PACKAGE)
        if commit:
            dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=PACKAGE)
            return f"{__version__}+g{commit}" + (".dirty" if dirty else "")
    return f"{__version__}+src{source_hash()}"
