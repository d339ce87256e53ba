"""Named fault points, so a test can crash or fail a process at an exact window (between two steps).

Code marks a window with `faults.point("router.after_decision")`. Unarmed (always, outside tests), a point
is one dict lookup. A process is armed by `BATON_FAULTS` (`Settings.faults`, applied by `arm` at start-up):
a comma-separated list of `<point>=<action>`, where the action is

- `exit`: the process ends at once (`os._exit`), as a SIGKILL would leave it: nothing flushed, no ack;
- `raise`: the point raises `InjectedFault`, a `ConnectionError` (a transient error, like a dropped
  connection);

optionally followed by `*N` to fire N times (default once), e.g. `worker.handler=raise*2`. After its
last firing a point is inert again, so the process recovers as it would from the real fault.
"""

from __future__ import annotations

import os
import sys

_armed: dict[str, list] = {}  # point -> [action, times left]; empty unless a test armed this process
ACTIONS = ("exit", "raise")


class InjectedFault(ConnectionError):
    """Raised at an armed point (a transient error, as a dropped connection would be)."""


def parse(spec: str) -> dict[str, list]:
    armed: dict[str, list] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, times = action.partition("*")
        if not name or action not in ACTIONS or (times and not times.isdigit()):
            raise ValueError(f"BATON_FAULTS item {item!r} is not <point>=exit|raise[*N]")
        armed[name.strip()] = [action, int(times or 1)]
    return armed


def arm(spec: str) -> None:
    """Arm this process's points from a `BATON_FAULTS` value (empty: disarm all)."""
    _armed.clear()
    _armed.update(parse(spec))


def point(name: str) -> None:
    """A named window: does nothing unless this process was armed at `name`."""
    if not _armed:
        return
    entry = _armed.get(name)
    if entry is None or entry[1] <= 0:
        return
    entry[1] -= 1
    if entry[0] == "exit":
        print(f"fault injected: exit at {name}", file=sys.stderr, flush=True)
        os._exit(70)
    raise InjectedFault(f"fault injected at {name}")
