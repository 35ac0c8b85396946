"""A Dask cluster on this machine for trying ``attn-grade autograde --scheduler``: a scheduler
and named one-thread workers on 127.0.0.1 (``bench/grading_bench.py --scheduler local``, and the
fixture of ``tests/test_cluster.py``). Grading itself lives in :mod:`grader.cluster`."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from .cluster import ClusterError


class LocalCluster:
    """A Dask scheduler and named one-thread workers on 127.0.0.1, each in a process session of
    its own (killed with its group), logging to ``root/<name>.log``: ``--scheduler`` tried on
    one machine (``bench/grading_bench.py --scheduler local``) and the cluster tests' fixture.
    ``address`` is the scheduler file, which ``--scheduler`` accepts."""

    def __init__(self, root: pathlib.Path, env: dict | None = None, start_timeout: float = 60.0):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.file = root, root / "scheduler.json"
        self.env = dict(os.environ, OMP_NUM_THREADS="1") if env is None else env
        self.workers: dict[str, subprocess.Popen] = {}
        self.scheduler = self._start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                      "--port", "0", "--no-dashboard", "--scheduler-file", str(self.file)], "scheduler")
        end = time.monotonic() + start_timeout
        while not self.file.exists():
            if time.monotonic() > end or self.scheduler.poll() is not None:
                self.close()
                raise ClusterError(f"the local Dask scheduler did not start: {self.log('scheduler')}")
            time.sleep(0.1)
        self.address = str(self.file)

    def _start(self, cmd, name, env=None) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "wb") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or self.env,
                                    start_new_session=True)

    def log(self, name: str) -> str:
        """The last 2000 characters that process ``name`` wrote."""
        return (self.root / f"{name}.log").read_text(errors="replace")[-2000:]

    def add_worker(self, name: str, env: dict | None = None, *, nanny: bool = True) -> None:
        self.workers[name] = self._start(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file), "--nthreads", "1",
             "--no-dashboard", "--name", name, "--death-timeout", "60", *([] if nanny else ["--no-nanny"])], name, env)

    def client(self):
        from distributed import Client
        return Client(scheduler_file=self.address, timeout=30, set_as_default=False)

    def wait_for(self, n: int, timeout: float = 120.0) -> None:
        """Until ``n`` workers have joined; ClusterError with their logs after ``timeout`` seconds."""
        with self.client() as c:
            end = time.monotonic() + timeout
            while len(c.scheduler_info()["workers"]) < n:
                if time.monotonic() > end:
                    raise ClusterError("workers did not join: " + " | ".join(map(self.log, self.workers)))
                time.sleep(0.2)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def close(self) -> None:
        for proc in [*self.workers.values(), self.scheduler]:
            self.kill(proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
