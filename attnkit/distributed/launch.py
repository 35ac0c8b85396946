"""Start ``W`` processes on this machine that form a ``torch.distributed`` process group, run
one function in each, and hand their results back: what ``torchrun`` does, callable from
a notebook.

Each worker process is *spawned* (a fresh Python interpreter, as CUDA requires and as
macOS and Windows do by default), so the function it runs must be importable by name: a
module-level function in a ``.py`` file, not one defined in a notebook cell. Its arguments
and results travel through files in a temporary folder (``torch.save``), not through shared
memory.

The parent hosts the rendezvous store (a ``TCPStore`` on ``127.0.0.1``, port chosen by the
OS), so no port has to be guessed. Nothing hangs: collectives and point-to-point waits
time out after ``collective_timeout`` seconds; the parent waits at most ``timeout`` seconds
in all; as soon as one rank fails the others are killed and the parent raises
:class:`WorkerError` naming the rank, its exception and its traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait as _wait_any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .. import _validate as chk


class WorkerError(RuntimeError):
    """A worker process failed; ``rank`` says which, ``detail`` holds its traceback."""

    def __init__(self, message: str, rank: int, detail: str = ""):
        super().__init__(message)
        self.rank, self.detail = rank, detail


def _loopback_interface() -> str:
    return "lo0" if sys.platform == "darwin" else "lo"


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the children (spawn copies ``os.environ`` at start)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _child(rank: int, world_size: int, worker: Callable, port: int, backend: str, folder: str,
           collective_timeout: float) -> None:
    folder = pathlib.Path(folder)
    (folder / f"started{rank}").touch()
    torch.set_num_threads(1)  # W processes share the machine's cores
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        args = torch.load(folder / "args.pt", weights_only=False)
        timeout = datetime.timedelta(seconds=collective_timeout)
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        result = worker(rank, world_size, *args)
        torch.save(result, folder / f"result{rank}.pt")
        dist.barrier()  # nobody leaves while a peer may still be reading from it
        dist.destroy_process_group()
    except BaseException as e:  # report everything, KeyboardInterrupt included, then die
        text = "".join(traceback.format_exception(e))
        (folder / f"error{rank}.txt").write_text(f"{time.time()!r}\n{type(e).__name__}: {e}\n{text}")
        _leave(1)
    _leave(0)


def _leave(code: int) -> None:
    """Exit at once: the result is on disk, and tearing down torch takes seconds on a busy machine."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _kill(processes) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def _failure(rank: int, world_size: int, process, folder: pathlib.Path, others_failed: list[int]) -> WorkerError:
    error = folder / f"error{rank}.txt"
    if error.exists():
        _, headline, detail = error.read_text().split("\n", 2)
        message = f"rank {rank} of {world_size} failed with {headline}"
    else:
        code = process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            message = f"rank {rank} of {world_size} was killed by signal {name} (out of memory?)"
        elif not (folder / f"started{rank}").exists():
            message = (f"rank {rank} of {world_size} failed while starting, before running the worker (its error "
                       f"is printed above; a script that calls launch must guard its top-level code with "
                       f"`if __name__ == '__main__':`, since every spawned process imports it)")
        else:
            message = f"rank {rank} of {world_size} exited with code {code} without raising a Python exception"
        detail = ""
    if others_failed:
        message += f" (then rank{'s' if len(others_failed) > 1 else ''} {', '.join(map(str, others_failed))} stopped too)"
    if detail:
        message += f"\n--- traceback of rank {rank} ---\n{detail.rstrip()}"
    return WorkerError(message, rank, detail)


def _first_failure(failed: list[int], folder: pathlib.Path) -> int:
    """Of the ranks seen failing together, the one whose error was written first (a rank
    that died without writing one, e.g. killed, counts as first: the others had time to write)."""
    def when(rank):
        error = folder / f"error{rank}.txt"
        return float(error.read_text().split("\n", 1)[0]) if error.exists() else float("-inf")
    return min(failed, key=lambda r: (when(r), r))


def launch(worker: Callable, world_size: int, *args, backend: str = "gloo", timeout: float = 120.0,
           collective_timeout: float = 60.0) -> list:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` spawned processes that form
    one process group; return the list of their return values, by rank.

    worker: a module-level function (importable by name in a fresh interpreter).
    backend: ``"gloo"`` (CPU tensors) or ``"nccl"`` (one GPU per rank: rank ``r`` uses ``cuda:r``).
    timeout: seconds the whole run may take before every rank is killed (``TimeoutError``).
    collective_timeout: seconds a collective or a transfer may wait for the other ranks.

    Raises :class:`WorkerError` naming the rank that failed first, with its traceback.
    """
    world_size = chk.positive_int("world_size", world_size)
    if not callable(worker):
        raise TypeError(f"worker must be a function, got {type(worker).__name__}")
    qualname = getattr(worker, "__qualname__", "")
    if getattr(worker, "__module__", "__main__") in ("__main__", "__mp_main__") or "<" in qualname:
        raise TypeError(f"launch: {qualname or worker!r} must be a module-level function in a .py file: spawned "
                        f"processes import it by name, and cannot import functions defined in a notebook "
                        f"or inside another function")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"backend 'nccl' needs one GPU per rank: {world_size} ranks, "
                         f"{torch.cuda.device_count()} GPUs")
    for name, value in (("timeout", timeout), ("collective_timeout", collective_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value}")

    folder = pathlib.Path(tempfile.mkdtemp(prefix="attnkit-launch-"))
    context = mp.get_context("spawn")
    processes = []
    try:
        torch.save(args, folder / "args.pt")
        store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=collective_timeout))
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(store.port), "WORLD_SIZE": str(world_size),
               "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", _loopback_interface())}
        with _environment(**env):
            for rank in range(world_size):
                p = context.Process(target=_child, daemon=True, name=f"attnkit-rank{rank}",
                                    args=(rank, world_size, worker, store.port, backend, str(folder),
                                          collective_timeout))
                p.start()
                processes.append(p)
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.exitcode for p in processes]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:  # the first to go is the cause; the ranks waiting on it fail after it
                first = _first_failure(failed, folder)
                time.sleep(0.2)  # let those write their errors before they are killed
                later = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0) and r != first]
                _kill(processes)
                raise _failure(first, world_size, processes[first], folder, later)
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                running = [r for r, c in enumerate(codes) if c is None]
                _kill(processes)
                raise TimeoutError(f"launch: rank{'s' if len(running) > 1 else ''} {', '.join(map(str, running))} "
                                   f"of {world_size} still running after {timeout:g} s; all ranks were stopped")
            _wait_any([p.sentinel for p in processes if p.exitcode is None], timeout=0.1)
        results = []
        for rank in range(world_size):
            path = folder / f"result{rank}.pt"
            if not path.exists():
                raise WorkerError(f"rank {rank} of {world_size} exited cleanly but returned nothing", rank)
            results.append(torch.load(path, weights_only=False))
        return results
    finally:
        _kill(processes)
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["WorkerError", "launch"]
