"""Device plans for several GPUs (no GPU needed: device counts are monkeypatched)."""

import os
import queue

import pytest
import torch

from auglens import executors
from auglens.devices import pin_worker, plan_devices, visible_cuda_devices, wants_cuda
from auglens.errors import AuglensError
from auglens.executors import LocalExecutor, auto_workers, executor_plan, make_executor


def fake_gpus(monkeypatch: pytest.MonkeyPatch, n: int, env: str | None = None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)


def test_local_round_robin_over_gpus() -> None:
    plan = plan_devices("local", 4, 2)
    assert plan.devices == ("cuda:0", "cuda:1", "cuda:0", "cuda:1")
    assert plan.pins == ("0", "1", "0", "1")
    lines = plan.lines()
    assert lines[0] == "devices: local executor, 4 workers, 2 visible CUDA devices"
    assert lines[3] == ("  worker 2 → cuda:0 (CUDA_VISIBLE_DEVICES=0, seen as cuda:0), "
                        "shared by 2 workers")
    assert len(lines) == 5


def test_one_worker_per_gpu_and_restricted_parent() -> None:
    plan = plan_devices("local", 2, ["2", "GPU-5d8f"])
    assert plan.devices == ("cuda:0", "cuda:1")
    assert plan.pins == ("2", "GPU-5d8f")  # the parent's own entries, not renumbered
    assert "shared" not in "\n".join(plan.lines())


def test_cpu_cases() -> None:
    for plan in (plan_devices("local", 3, 0), plan_devices("local", 3, 2, device="cpu")):
        assert plan.devices == ("cpu",) * 3 and plan.pins == (None,) * 3
        assert plan.lines()[1] == "  worker 0 → cpu"
    with pytest.raises(AuglensError, match="CUDA is not available"):
        plan_devices("local", 2, 0, device="cuda")
    with pytest.raises(AuglensError, match="valid executors: local, ray"):
        plan_devices("slurm", 2, 0)
    with pytest.raises(AuglensError, match="workers"):
        plan_devices("local", 0, 0)
    with pytest.raises(AuglensError, match="device must be"):
        wants_cuda("tpu", 1)


def test_explicit_device_single_worker_and_unused_gpus() -> None:
    plan = plan_devices("local", 2, 4, device="cuda:1")
    assert plan.devices == ("cuda:1", "cuda:1") and plan.pins == (None, None)
    assert "as configured" in plan.lines()[-1]
    one = plan_devices("local", 1, 4)
    assert one.devices == ("cuda:0",) and one.pins == (None,)  # runs in this process
    few = plan_devices("local", 2, 4, device="cuda")
    assert few.pins == ("0", "1") and "2 GPU(s) unused" in few.lines()[-1]


def test_ray_plan() -> None:
    gpu = plan_devices("ray", 3, 2)
    assert gpu.devices == ("cuda",) * 3 and gpu.pins == (None,) * 3
    assert "num_gpus=1" in gpu.lines()[0]
    cpu = plan_devices("ray", 3, 2, device="cpu")
    assert "num_gpus=0" in cpu.lines()[0]
    remote = plan_devices("ray", 2, 0, device="cuda")  # GPUs may live on other nodes
    assert remote.uses_cuda and "GPU nodes" in remote.lines()[1]


def test_visible_devices_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 2, "3,1")
    assert visible_cuda_devices() == ["3", "1"]
    fake_gpus(monkeypatch, 3)
    assert visible_cuda_devices() == ["0", "1", "2"]
    fake_gpus(monkeypatch, 0)
    assert visible_cuda_devices() == []


def test_auto_workers_and_make_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 3)
    assert auto_workers() == 3
    assert auto_workers("cpu") == max(1, min(os.cpu_count() or 1, 8))
    ex = make_executor("local", None)
    assert isinstance(ex, LocalExecutor) and ex.workers == 3
    assert ex.plan.pins == ("0", "1", "2")
    assert executor_plan("local", 2, "cpu").devices == ("cpu", "cpu")
    fake_gpus(monkeypatch, 0)
    assert make_executor("local", None).plan.devices[0] == "cpu"
    with pytest.raises(AuglensError, match="valid executors"):
        make_executor("slurm")
    with pytest.raises(AuglensError, match="device plan for 2"):
        LocalExecutor(3, plan_devices("local", 2, 0))


def test_pin_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    slots: queue.SimpleQueue = queue.SimpleQueue()
    slots.put("1")
    slots.put(None)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert pin_worker(slots) == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert pin_worker(slots) is None and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert pin_worker(None) is None
    slots.put("0")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(AuglensError, match="already initialised"):
        pin_worker(slots)


def _visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_spawned_workers_are_pinned() -> None:
    """Real pool: each spawned worker takes its own pin before running any task."""
    plan = plan_devices("local", 2, ["7", "8"])
    ex = LocalExecutor(2, plan)
    try:
        got = {r for _, r in ex.map(_visible, [()] * 6)}
    finally:
        ex.close()
    assert got <= {"7", "8"} and got
    assert executors._threads_for(2) >= 1


class FakeRay:
    """Just enough of Ray's API for RayExecutor's resource choices."""

    def __init__(self, gpus: int) -> None:
        self.gpus, self.declared = gpus, []

    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict:
        return {"CPU": 8.0, "GPU": float(self.gpus)} if self.gpus else {"CPU": 8.0}

    def remote(self, **resources):
        self.declared.append(resources)

        class Task:
            def __init__(self, fn):
                self.remote = lambda *args: object()  # a unique ref

        return Task

    def wait(self, pending, num_returns=1):
        return pending[:num_returns], pending[num_returns:]

    def get(self, ref):
        return ref


@pytest.mark.parametrize("gpus", [0, 2])
def test_ray_tasks_declare_gpus(monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    import sys

    fake = FakeRay(gpus)
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert make_executor("ray").num_gpus == (1 if gpus else 0)  # "auto": from the cluster
    assert make_executor("ray", device="cuda").num_gpus == 1
    assert make_executor("ray", device="cpu").num_gpus == 0
    ex = make_executor("ray", threads=3)
    assert len(list(ex.map(_visible, [(), ()]))) == 2  # declares the tasks' resources
    assert fake.declared[-1] == {"num_cpus": 3, "num_gpus": 1 if gpus else 0}
