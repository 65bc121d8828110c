"""Where grid tasks run: in this process, in local worker processes, or as Ray tasks.

A task is a module-level function plus picklable arguments; every task writes its own outputs into
the run directory atomically (a shared filesystem is assumed for a Ray cluster), so executors only
differ in where the function runs. ``map`` yields results as tasks finish.

Devices (`auglens.devices`): local workers are pinned to one GPU each (``CUDA_VISIBLE_DEVICES``
set by the pool initializer from a `DevicePlan`); Ray tasks declare ``num_gpus=1`` when CUDA is
wanted and Ray pins them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from .devices import DevicePlan, pin_worker, plan_devices
from .errors import AuglensError

EXECUTORS = ("local", "ray")


def _threads_for(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: exit when the parent process dies (e.g. SIGKILL), instead of
    lingering as an orphan holding memory."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="auglens-parent-watch").start()


def _init_worker(parent: int, slots: Any) -> None:
    """Pool-worker initializer: pin to a GPU (`pin_worker`) first, then watch the parent."""
    pin_worker(slots)
    _exit_with_parent(parent)


def _call(fn: Callable[..., Any], args: tuple, threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


class Executor:
    """Runs ``fn(*args)`` for each args tuple; yields ``(index, result)`` as tasks finish."""

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def events(self) -> Any:
        """A queue tasks may ``put`` progress events on (picklable for this executor's
        workers), or None when progress cannot flow back (e.g. a remote cluster)."""
        return None

    def close(self) -> None:
        """Release workers or cluster connections."""


class LocalExecutor(Executor):
    """``workers`` = 1: in this process, in order. More: a spawn-based process pool, each worker
    with ``cpu_count // workers`` torch threads, kept alive across `map` calls (stages) until
    `close`, so workers import torch and load the dataset once per run. ``plan``: per-worker
    devices (`auglens.devices.plan_devices`); each spawned worker takes the next pin."""

    def __init__(self, workers: int = 1, plan: DevicePlan | None = None) -> None:
        if workers < 1:
            raise AuglensError(f"--workers must be >= 1, got {workers}")
        if plan is not None and plan.workers != workers:
            raise AuglensError(f"device plan for {plan.workers} workers, executor has {workers}")
        self.workers = workers
        self.plan = plan
        self._pool: ProcessPoolExecutor | None = None
        self._manager: Any = None
        self._queue: Any = None

    def events(self) -> Any:
        if self._queue is None:
            if self.workers == 1:
                import queue

                self._queue = queue.SimpleQueue()
            else:
                import multiprocessing as mp
                from multiprocessing.managers import SyncManager

                self._manager = SyncManager(ctx=mp.get_context("spawn"))
                self._manager.start(_exit_with_parent, (os.getpid(),))
                self._queue = self._manager.Queue()
        return self._queue

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        if self.workers == 1 or len(tasks) <= 1:
            for i, args in enumerate(tasks):
                yield i, fn(*args)
            return
        import multiprocessing as mp

        threads = _threads_for(self.workers)
        if self._pool is None:
            ctx = mp.get_context("spawn")
            slots = None
            if self.plan is not None and any(p is not None for p in self.plan.pins):
                slots = ctx.SimpleQueue()
                for pin in self.plan.pins:  # at most `workers` processes are ever started
                    slots.put(pin)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx,
                                             initializer=_init_worker,
                                             initargs=(os.getpid(), slots))
        futures = {self._pool.submit(_call, fn, args, threads): i for i, args in enumerate(tasks)}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._manager is not None:
            self._manager.shutdown()
            self._manager = self._queue = None


class RayExecutor(Executor):
    """Each task is a Ray task declaring ``num_cpus`` (and ``num_gpus`` when CUDA is wanted;
    None: 1 when the cluster has GPUs, else 0; Ray then sets each task's CUDA_VISIBLE_DEVICES).
    ``address`` None starts a local Ray instance; otherwise connects to an existing cluster."""

    def __init__(self, address: str | None = None, num_cpus: int = 1,
                 num_gpus: float | None = 0, init_kwargs: dict | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise AuglensError(
                "the Ray executor needs Ray: pip install 'auglens[ray]'"
            ) from None
        self.ray = ray
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self._owns = False
        if not ray.is_initialized():
            kwargs = dict(init_kwargs or {})
            if address:
                kwargs["address"] = address
            ray.init(**kwargs, log_to_driver=False, include_dashboard=False)
            self._owns = True
        if num_gpus is None:  # "auto": one GPU per task when the cluster has GPUs
            self.num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        remote = self.ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_call)
        refs = {remote.remote(fn, args, self.num_cpus): i for i, args in enumerate(tasks)}
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], self.ray.get(ref)

    def close(self) -> None:
        if self._owns:
            self.ray.shutdown()


def auto_workers(device: str = "auto") -> int:
    """Default local worker count: one per CPU core (at most 8) on a CPU-only machine (or with
    ``device`` "cpu"), where several small single-threaded models train faster than one model on
    all cores; one per visible GPU with CUDA."""
    from .devices import visible_cuda_devices, wants_cuda

    n_gpu = len(visible_cuda_devices())
    if wants_cuda(device, n_gpu) and n_gpu:
        return n_gpu
    return max(1, min(os.cpu_count() or 1, 8))


def executor_plan(name: str = "local", workers: int | None = 1,
                  device: str = "auto") -> DevicePlan:
    """The `DevicePlan` `make_executor` would use (``auglens run --dry-run`` prints its lines)."""
    if name == "local":
        return plan_devices("local", auto_workers(device) if workers is None else workers,
                            device=device)
    return plan_devices(name, workers or 1, device=device)


def make_executor(name: str = "local", workers: int | None = 1, address: str | None = None,
                  threads: int | None = None, device: str = "auto") -> Executor:
    """Executor by name (``workers`` None: `auto_workers`); unknown names list the valid ones.
    ``device``: the config's ``train.device``, which decides GPU pinning (local) and
    ``num_gpus`` (Ray: 1 for "cuda", 0 for "cpu", for "auto" 1 when the cluster has GPUs)."""
    if name not in EXECUTORS:
        raise AuglensError(f"unknown executor '{name}'; valid executors: {', '.join(EXECUTORS)}")
    if name == "local":
        plan = executor_plan(name, workers, device)
        return LocalExecutor(plan.workers, plan)
    gpus: float | None = {"cpu": 0, "auto": None}.get(device, 1)
    return RayExecutor(address, num_cpus=threads or 1, num_gpus=gpus)
