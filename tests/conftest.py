import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import glob  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def g():
    """A fresh seeded generator per test."""
    return torch.Generator().manual_seed(0)


POSTGRES_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _as_nobody(*cmd):
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    subprocess.run(prefix + list(cmd), check=True, capture_output=True, timeout=120)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster (server binaries from Debian); its URL."""
    if not POSTGRES_BIN or shutil.which("setpriv") is None:
        pytest.skip("PostgreSQL server not installed")
    pytest.importorskip("psycopg")
    root = pathlib.Path(tempfile.mkdtemp(prefix="attn-pg-"))  # pytest's tmp_path is not traversable by nobody
    if os.geteuid() == 0:
        os.chown(root, 65534, 65534)
    bindir = pathlib.Path(POSTGRES_BIN[-1])
    _as_nobody(str(bindir / "initdb"), "-D", str(root / "data"), "--auth=trust", "-U", "grader")
    _as_nobody(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", f"-k {root} -c listen_addresses=''",
               "-l", str(root / "log"), "-w", "start")
    try:
        _as_nobody(str(bindir / "createdb"), "-h", str(root), "-U", "grader", "course")
        yield f"postgresql://grader@/course?host={root}"
    finally:
        _as_nobody(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
