"""Which device each grid worker trains on: one CUDA device per local worker, or the CPU.

`plan_devices` turns (executor kind, worker count, visible CUDA devices, wanted device) into a
`DevicePlan`; its `DevicePlan.lines` are what ``auglens run --dry-run`` prints.

Local workers are pinned with ``CUDA_VISIBLE_DEVICES``, set by the pool's initializer in each
freshly spawned worker before anything touches CUDA (`pin_worker`): the worker then sees exactly
one GPU, as ``cuda:0``, so every "auto"/"cuda" in the code lands on it, no CUDA context can be
created on another GPU by a library that defaults to device 0, and memory reports are per GPU.
(``torch.cuda.set_device`` would leave every GPU visible, and anything that names ``cuda:0`` or
initialises before the call would use GPU 0.) The entry written is the parent's own
``CUDA_VISIBLE_DEVICES`` entry at that index (an index, a ``GPU-…`` UUID or a MIG id), so a
restricted parent (``CUDA_VISIBLE_DEVICES=2,3``) gives its workers GPUs 2 and 3. More workers
than GPUs share GPUs round-robin (worker i → visible GPU i mod n). Ray tasks are pinned by Ray
itself: each declares ``num_gpus=1`` when CUDA is wanted and Ray sets ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import AuglensError

EXECUTOR_KINDS = ("local", "ray")


def visible_cuda_devices() -> list[str]:
    """Identifiers of the CUDA devices this process can use, as ``CUDA_VISIBLE_DEVICES`` entries
    (the parent's entries when it is set, else "0".."n-1"); [] without CUDA."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        entries = [e.strip() for e in env.split(",") if e.strip()]
        if len(entries) >= n:
            return entries[:n]
    return [str(i) for i in range(n)]


def wants_cuda(device: str, n_cuda: int) -> bool:
    """Whether a config's ``train.device`` ("auto", "cpu", "cuda", "cuda:N") trains on CUDA."""
    if device == "cpu":
        return False
    if device == "auto":
        return n_cuda > 0
    if device.startswith("cuda"):
        return True
    raise AuglensError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{device}'")


@dataclass(frozen=True)
class DevicePlan:
    """Per-worker devices. ``devices[i]``: what worker i trains on ("cuda:0", …, "cpu", or
    "cuda" for Ray tasks, each given one GPU by Ray); ``pins[i]``: its ``CUDA_VISIBLE_DEVICES``
    value (None: not pinned)."""

    executor: str
    workers: int
    visible: tuple[str, ...]
    devices: tuple[str, ...]
    pins: tuple[str | None, ...]
    note: str = ""

    @property
    def uses_cuda(self) -> bool:
        return any(d.startswith("cuda") for d in self.devices)

    def lines(self) -> list[str]:
        """Human-readable plan (one line per worker, plus a summary), for ``--dry-run``."""
        gpus = f"{len(self.visible)} visible CUDA device" + ("" if len(self.visible) == 1 else "s")
        if self.executor == "ray":
            per = "1 GPU (num_gpus=1)" if self.uses_cuda else "no GPU (num_gpus=0)"
            out = [f"devices: ray executor, each task declares {per}; this machine has {gpus}"]
            return out + ([f"  {self.note}"] if self.note else [])
        out = [f"devices: local executor, {self.workers} worker"
               + ("" if self.workers == 1 else "s") + f", {gpus}"]
        share: dict[str, int] = {}
        for d in self.devices:
            share[d] = share.get(d, 0) + 1
        for i, (d, pin) in enumerate(zip(self.devices, self.pins, strict=True)):
            how = f" (CUDA_VISIBLE_DEVICES={pin}, seen as cuda:0)" if pin is not None else ""
            shared = f", shared by {share[d]} workers" if d != "cpu" and share[d] > 1 else ""
            out.append(f"  worker {i} → {d}{how}{shared}")
        if self.note:
            out.append(f"  {self.note}")
        return out


def plan_devices(
    executor: str,
    workers: int,
    visible: Sequence[str] | int | None = None,
    device: str = "auto",
) -> DevicePlan:
    """Assign a device to each of ``workers`` workers of ``executor`` ("local" or "ray").

    ``visible``: CUDA devices as ``CUDA_VISIBLE_DEVICES`` entries, or their count (None: this
    process's, `visible_cuda_devices`). ``device``: the config's ``train.device``. Local workers
    get visible GPU ``i mod n`` each (pinned when there is more than one worker; one worker in
    this process keeps the device as configured); with "cpu", no GPU, or an explicit "cuda:N"
    (respected, not pinned) they are not pinned.
    """
    if executor not in EXECUTOR_KINDS:
        raise AuglensError(
            f"unknown executor '{executor}'; valid executors: {', '.join(EXECUTOR_KINDS)}"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise AuglensError(f"--workers must be an integer >= 1, got {workers!r}")
    if visible is None:
        visible = visible_cuda_devices()
    elif isinstance(visible, int):
        visible = [str(i) for i in range(visible)]
    vis = tuple(str(v) for v in visible)
    cuda = wants_cuda(device, len(vis))
    if executor == "ray":
        d = "cuda" if cuda else "cpu"
        note = "" if vis or not cuda else "no CUDA device here; Ray places tasks on GPU nodes"
        return DevicePlan("ray", workers, vis, (d,) * workers, (None,) * workers, note)
    if cuda and not vis:
        raise AuglensError(
            f"device '{device}' requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    if not cuda:
        return DevicePlan("local", workers, vis, ("cpu",) * workers, (None,) * workers)
    if device.startswith("cuda:") or workers == 1:
        d = device if device.startswith("cuda:") else "cuda:0"
        note = (f"every worker uses {device} as configured (not pinned); use device 'auto' or "
                "'cuda' to spread workers over the GPUs") if device.startswith("cuda:") and (
            workers > 1 and len(vis) > 1) else ""
        return DevicePlan("local", workers, vis, (d,) * workers, (None,) * workers, note)
    devs = tuple(f"cuda:{i % len(vis)}" for i in range(workers))
    pins = tuple(vis[i % len(vis)] for i in range(workers))
    note = ""
    if workers < len(vis):
        note = f"{len(vis) - workers} GPU(s) unused: set --workers {len(vis)} to use them all"
    return DevicePlan("local", workers, vis, devs, pins, note)


def pin_worker(slots: object) -> str | None:
    """Pool-worker initializer part: take the next ``CUDA_VISIBLE_DEVICES`` value from the
    ``slots`` queue (one entry per worker, or None) and set it before CUDA initialises; returns
    it. Raises if CUDA is already initialised in this process (the pin would not take effect)."""
    pin = slots.get() if slots is not None else None  # type: ignore[attr-defined]
    if pin is None:
        return None
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise AuglensError("cannot pin a worker to a GPU: CUDA is already initialised in it")
    os.environ["CUDA_VISIBLE_DEVICES"] = pin
    return pin
