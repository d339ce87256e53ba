"""What every scenario shares: starting and stopping processes by PID, CPU accounting, the measurement window.

Throughput is measured the same way for every system. The queue is filled with N tasks first (not timed),
then K consumer processes are started. Completions are sampled as they arrive; the rate is taken over the
window in which every one of the K processes is working, i.e. from the moment the last of them finished its
first task to the N-th completion. Start-up (imports, forking, connecting) is outside the window for all
systems alike.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from baton.servers import stop_pid

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (read from /proc, no names involved)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


@dataclass
class Procs:
    """Processes a scenario started; each logs to its own file and is stopped by its PID."""

    logdir: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        self.logdir.mkdir(parents=True, exist_ok=True)
        with open(self.logdir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    @property
    def pids(self) -> list[int]:
        return [p.pid for _n, p in self.procs]

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.logdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM each process we started (and, after it, any child it left), SIGKILL after `timeout`."""
        for _name, proc in reversed(self.procs):
            tree = descendants(proc.pid)
            stop_pid(proc.pid, timeout, proc)
            for child in tree[1:]:
                stop_pid(child, 2, None)
        self.procs.clear()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


@dataclass
class Window:
    """Completions over time, and when each consumer process finished its first task."""

    n: int
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, completions so far)
    first: dict[str, float] = field(default_factory=dict)  # consumer -> time of its first completion
    started_at: float = field(default_factory=time.time)

    def add(self, t: float, count: int) -> None:
        self.samples.append((t, count))

    @property
    def done_at(self) -> float | None:
        return next((t for t, c in self.samples if c >= self.n), None)

    def result(self, processes: int) -> dict:
        end = self.done_at
        if end is None or not self.samples:
            done = self.samples[-1][1] if self.samples else 0
            return {"ok": False, "error": f"{done} of {self.n} tasks completed before the time-out"}
        first_any = min(self.first.values()) if self.first else self.samples[0][0]
        # The window opens when every process has completed a task (all of them are working).
        start = max(self.first.values()) if len(self.first) >= processes else first_any
        before = [c for t, c in self.samples if t <= start]
        count_at_start = before[-1] if before else 0
        seconds = end - start
        rate = (self.n - count_at_start) / seconds if seconds > 0 else float("nan")
        return {
            "ok": True,
            "tasks_per_s": round(rate, 1),
            "window_tasks": self.n - count_at_start,
            "window_s": round(seconds, 4),
            "all_processes_seen": len(self.first) >= processes,
            "processes_seen": len(self.first),
            "overall_tasks_per_s": round(self.n / (end - first_any), 1) if end > first_any else None,
        }


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def ratio_interval(
    with_: list[float], without: list[float], p: float, rounds: int = 1000, level: float = 0.90
) -> tuple[float, float, float] | None:
    """The p-th percentile of `with_` over that of `without`, and a bootstrap interval for that ratio (each
    sample drawn again with replacement, `rounds` times; the middle `level` of the ratios): how far the
    samples alone could move it. A p99 of a thousand hops rests on its ten slowest, so a 5 % difference
    needs the interval to say whether it was measured at all. Seeded: the same samples, the same interval."""
    if not with_ or not without:
        return None
    rng = random.Random(0)
    ratio = percentile(with_, p) / percentile(without, p)
    ratios = sorted(
        percentile(rng.choices(with_, k=len(with_)), p) / percentile(rng.choices(without, k=len(without)), p)
        for _ in range(rounds)
    )
    tail = (1 - level) / 2
    return ratio, ratios[int(tail * rounds)], ratios[min(rounds - 1, int((1 - tail) * rounds))]


class IdleCgroup:
    """A cgroup whose processes get a core only when it would otherwise idle (`cpu.idle` = 1, Linux 5.15+):
    any other process that wakes takes the core from them at once. A process' nice value cannot do this
    (each process the benchmark starts is its own session, so its own scheduling group, where its nice
    weighs nothing against the others), nor can an autogroup's nice (measured). Needs root and the cpu
    controller (cgroup v1 or v2); otherwise a RuntimeError that says which is missing.

    With `shares`, the cgroup is not idle-class but of that CPU weight in cgroup v1's units (`cpu.shares`,
    2-262144, 1024 a process' default; v2 gets the `cpu.weight` Docker gives for it, 1-10000): what
    compose's `cpu_shares` sets on a container's cgroup, so the benchmark measures that placement."""

    def __init__(
        self, name: str = "baton-bench-idle", root: Path = Path("/sys/fs/cgroup"), shares: int | None = None
    ) -> None:
        if shares is not None and not 2 <= shares <= 262144:
            raise ValueError(f"cpu shares must be 2-262144 (1024 is a process' default), not {shares}")
        self.shares = shares
        unified = root / "cgroup.controllers"
        self.v2 = unified.exists()
        if self.v2:
            if "cpu" not in unified.read_text().split():
                raise RuntimeError(f"the cpu controller is not enabled in {root} (cgroup v2)")
            self.base = root
        else:
            self.base = root / "cpu"
        self.path = self.base / name

    @property
    def kind(self) -> str:
        return "idle-class" if self.shares is None else f"cpu.shares {self.shares}"

    def _settings(self) -> tuple[str, str]:
        if self.shares is None:
            return "cpu.idle", "1"
        if self.v2:  # (Docker's conversion of cpu shares to a v2 weight)
            return "cpu.weight", str(1 + (self.shares - 2) * 9999 // 262142)
        return "cpu.shares", str(self.shares)

    def __enter__(self) -> IdleCgroup:
        try:
            if (self.base / "cgroup.subtree_control").exists():  # (v2: children may use cpu)
                (self.base / "cgroup.subtree_control").write_text("+cpu")
            self.path.mkdir(exist_ok=True)
            key, value = self._settings()
            (self.path / key).write_text(value)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # (made, but not as asked: leave nothing behind)
            raise RuntimeError(
                f"cannot make the {self.kind} cgroup at {self.path} ({exc.strerror or exc}): it needs root, "
                "a writable cgroup file system with the cpu controller, and Linux 5.15 or later"
            ) from exc
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def __exit__(self, *exc) -> None:
        if not self.path.exists():
            return
        for pid in self.pids():  # (processes still running go back where they came from)
            with contextlib.suppress(OSError):  # (gone meanwhile)
                (self.base / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            self.path.rmdir()


def parse_cpus(value: str) -> set[int]:
    """`--console-cpus`: CPU numbers, `1` or `2,3` or `2-3`, all of them this process may run on and not
    all of them (the rest run everything else)."""
    cpus: set[int] = set()
    for part in value.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"CPUs are numbers or ranges such as 1 or 2-3, not {part.strip()!r}")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    have = os.sched_getaffinity(0)
    if not cpus <= have:
        raise ValueError(f"CPU {min(cpus - have)} is not one this process may run on ({sorted(have)})")
    if cpus == have:
        raise ValueError(f"CPUs {sorted(cpus)} are all this process has: none would be left for the services")
    return cpus


def _tasks(pid: int) -> list[int]:
    """A process' threads (their ids), or none if it has gone."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


class Pinned:
    """CPUs of their own for some processes (`move`), and every other process of this benchmark (this one,
    each thread, its servers and services, and any it starts later, which inherit it) on the rest: how a
    service placed on a host of its own would share nothing but the network with the others, on one machine.
    Needs no root (the processes are this user's). At exit every one of them may run anywhere again."""

    def __init__(self, cpus: set[int]) -> None:
        self.cpus = set(cpus)
        self.every = os.sched_getaffinity(0)
        self.rest = self.every - self.cpus

    @staticmethod
    def _set(pids: list[int], cpus: set[int]) -> None:
        for pid in pids:
            for tid in _tasks(pid):
                with contextlib.suppress(OSError):  # (a thread or process gone meanwhile)
                    os.sched_setaffinity(tid, cpus)

    def __enter__(self) -> Pinned:
        self._set(descendants(os.getpid()), self.rest)
        return self

    def move(self, pid: int) -> None:
        """`pid`, its threads and its descendants onto the CPUs of their own."""
        self._set(descendants(pid), self.cpus)

    def this_thread(self) -> None:
        """The calling thread onto the CPUs of their own (threads it starts later inherit it)."""
        os.sched_setaffinity(0, self.cpus)

    def __exit__(self, *exc) -> None:
        self._set(descendants(os.getpid()), self.every)
