"""Loading and committing one run's state a few fields at a time (layout: `shared/runs.py`).

`Loaded` holds the raw fields a handler read; `view()` parses them into a `RunState` whose tasks and
subtasks are `Partial` maps; `commit()` writes back only the fields whose bytes changed, with the events
the decision appends, in one script that first compares the revision it read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import BaseModel

from shared import streams
from shared.runs import CAUSE, SUBTASK, TASK, Effects, Partial, RunState, SubtaskState, TaskSlot

# Compare-and-set of one run's state, with what its decision appends to the run's own keys (its event
# stream, its cancellation mark: all in the run's hash slot). A supervisor dying at any
# instruction leaves either the old state and nothing appended, or the new state and everything.
# KEYS[1]: the state hash, KEYS[2..]: the other keys. ARGV: expected rev ('' = the run must not exist
# yet), new rev, then counted groups: prefixes of fields to drop, fields to drop, field/value pairs to
# set, and operations (command, key index, n, n arguments): `x` appends an entry (its `__data__`), any
# other command runs on the key with the arguments (EXPIRE, SET ... EX, ZADD, ZREM, HSETNX). Returns 1,
# or 0 if the revision differs (nothing written). On a cluster every key is the run's own (its hash
# slot); on one server a commit also carries what it sends elsewhere (`Engine.fold`).
COMMIT = """
local rev = redis.call('HGET', KEYS[1], 'rev')
if ARGV[1] == '' then
  if rev then return 0 end
elseif rev ~= ARGV[1] then return 0 end
local i = 3
local n = tonumber(ARGV[i]) i = i + 1
if n > 0 then
  local prefixes = {}
  for j = 1, n do prefixes[j] = ARGV[i] i = i + 1 end
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    for _, p in ipairs(prefixes) do
      if string.sub(f, 1, #p) == p then redis.call('HDEL', KEYS[1], f) break end
    end
  end
end
n = tonumber(ARGV[i]) i = i + 1
for j = 1, n do redis.call('HDEL', KEYS[1], ARGV[i]) i = i + 1 end
n = tonumber(ARGV[i]) i = i + 1
for j = 1, n do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) i = i + 2 end
redis.call('HSET', KEYS[1], 'rev', ARGV[2])
while i <= #ARGV do
  local op, key, n = ARGV[i], KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
  if op == 'x' then redis.call('XADD', key, '*', '__data__', ARGV[i + 3])
  else redis.call(op, key, unpack(ARGV, i + 3, i + 2 + n)) end
  i = i + 3 + n
end
return 1
"""


Op = tuple  # (command, key, *arguments): one operation of a commit (`x`: append an entry)


def append(stream: str, event: BaseModel) -> Op:
    """An operation for `commit`: append `event` to `stream` (one of the run's own streams)."""
    return ("x", stream, event.model_dump_json())


def expire(key: str, seconds: int) -> Op:
    return ("EXPIRE", key, str(seconds))


def set_with_ttl(key: str, value: str, seconds: int) -> Op:
    return ("SET", key, value, "EX", str(seconds))


KEEP_FIELDS = 32  # a state holding more fields than this is not kept (see `Store.put`)


@dataclass
class Loaded:
    """The fields of one run's hash a handler has read (None: the field does not exist)."""

    run_id: str
    rev: bytes | None = None
    fields: dict[str, bytes | None] = field(default_factory=dict)
    all_tasks: bool = False
    all_subtasks: bool = False
    state: RunState | None = None  # the parsed state, if kept from this process's last commit
    cached: bool = False  # came from the cache: fields other than the state's (`c:`) were not read

    @property
    def exists(self) -> bool:
        return self.fields.get("core") is not None

    def view(self) -> RunState:
        """A fresh, mutable `RunState` from what was read (parsed again each time: decisions mutate it;
        a state kept from the last commit is handed out once, unparsed)."""
        if self.state is not None:
            state, self.state = self.state, None
            return state
        state = RunState.model_validate_json(self.fields["core"])
        state.tasks = self._partial(TASK, TaskSlot, self.all_tasks)
        state.subtasks = self._partial(SUBTASK, SubtaskState, self.all_subtasks)
        return state

    def _partial(self, prefix: str, model, complete: bool) -> Partial:
        items, absent = {}, set()
        for name, raw in self.fields.items():
            if name.startswith(prefix):
                if raw is None:
                    absent.add(name[2:])
                else:
                    items[name[2:]] = model.model_validate_json(raw)
        return Partial(prefix, items, complete=complete, absent=absent)

    def effects(self, event_id: str) -> Effects | None:
        raw = self.fields.get(CAUSE + event_id)
        return Effects.model_validate_json(raw) if raw else None


class Store:
    """Reads and commits run states through `db` (the service's `Commands`: group-committed).

    It keeps the last committed state of up to `keep` active runs, parsed, with the bytes it wrote (a
    run's next hop then needs no read and no parse). A kept state is only a guess: the commit compares the
    revision in Redis, so one another replica changed meanwhile costs a read and a second decision, never
    a wrong commit. An entry is taken out while a handler uses it and put back only after its commit's
    effects are sent, so a handler that fails leaves nothing behind to trust."""

    def __init__(self, db, keep: int = 0) -> None:
        self.db = db
        self.keep = keep
        self.kept: OrderedDict[str, tuple[Loaded, RunState]] = OrderedDict()
        self.hits = 0  # (loads answered from a kept state)

    def put(self, loaded: Loaded, state: RunState) -> None:
        """Keep `state` (as just committed, described by `loaded`) for the run's next hop; not a run that
        ended, nor one holding many tasks or subtasks (a commit compares every one it holds, so a kept
        plan of thousands would make each hop cost as much as the plan: read, they are loaded as needed)."""
        if self.keep <= 0:
            return
        if not state.active or len(loaded.fields) > KEEP_FIELDS:
            self.kept.pop(loaded.run_id, None)
            return
        self.kept[loaded.run_id] = (loaded, state)
        self.kept.move_to_end(loaded.run_id)
        while len(self.kept) > self.keep:
            self.kept.popitem(last=False)

    async def load(self, run_id: str, *names: str, cached: bool = False) -> Loaded:
        """`rev`, `core` and the named fields, in one command; with `cached`, from the kept state if this
        process holds one (`c:` fields then count as absent: a caller that finds the event ignored must
        read again to see what it owes)."""
        entry = self.kept.pop(run_id, None) if cached else None
        # (a field the kept state does not hold: another replica moved the run on, most likely)
        if entry is not None and all(n in entry[0].fields or n.startswith(CAUSE) for n in names):
            loaded, state = entry
            loaded.state, loaded.cached = state, True
            self.hits += 1
            return loaded
        names = tuple(dict.fromkeys(("rev", "core", *names)))
        values = await self.db.call("HMGET", streams.run_state(run_id), *names)
        loaded = Loaded(run_id, rev=values[0])
        loaded.fields = dict(zip(names[1:], values[1:], strict=True))
        return loaded

    async def load_more(self, loaded: Loaded, name: str) -> None:
        """Add a field, or every field of a kind (`t:` / `s:`), to what was read."""
        if name in (TASK, SUBTASK):
            raw = await self.db.call("HGETALL", streams.run_state(loaded.run_id))
            pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
            for key, value in pairs:
                key = key.decode() if isinstance(key, bytes) else key
                if key.startswith(name):
                    loaded.fields[key] = value
            if name == TASK:
                loaded.all_tasks = True
            else:
                loaded.all_subtasks = True
            return
        (value,) = await self.db.call("HMGET", streams.run_state(loaded.run_id), name)
        loaded.fields[name] = value

    async def commit(
        self,
        loaded: Loaded,
        new: RunState,
        ops: list[Op] = (),
        effects: tuple[str, Effects] | None = None,
    ) -> Loaded | None:
        """Write what changed in `new` since `loaded`, plus `ops` and the cause's `effects`, if the run's
        revision is still the one read: then the fields as now stored (`c:` ones aside). None: it changed
        meanwhile (nothing was written)."""
        key = streams.run_state(loaded.run_id)
        stored: dict[str, bytes | None] = {}
        clear: list[str] = []
        drop: list[str] = []
        core = new.model_dump_json()
        sets: list[str] = ["core", core]
        stored["core"] = core.encode()
        for prefix, items in ((TASK, new.tasks), (SUBTASK, new.subtasks)):
            if getattr(items, "cleared", False):
                clear.append(prefix)
                if prefix == TASK:
                    clear.append(CAUSE)
            current = dict.items(items) if isinstance(items, Partial) else items.items()
            present = set()
            for name, value in current:
                field_name = prefix + name
                present.add(field_name)
                data = value.model_dump_json()
                raw = stored[field_name] = data.encode()
                if loaded.fields.get(field_name) != raw:
                    sets += [field_name, data]
            if not getattr(items, "cleared", False):
                drop += [
                    f
                    for f, raw in loaded.fields.items()
                    if f.startswith(prefix) and raw is not None and f not in present
                ]
        if effects is not None and not clear:
            sets += [CAUSE + effects[0], effects[1].model_dump_json()]
        keys: dict[str, int] = {key: 1}
        args: list = []
        for op, target, *values in ops:
            args += [op, keys.setdefault(target, len(keys) + 1), len(values), *values]
        rev = int(loaded.rev or 0)
        reply = await self.db.call(
            "EVAL",
            COMMIT,
            len(keys),
            *keys,
            str(rev) if loaded.rev is not None else "",
            str(rev + 1),
            len(clear),
            *clear,
            len(drop),
            *drop,
            len(sets) // 2,
            *sets,
            *args,
        )
        if not reply:
            return None
        if isinstance(new.tasks, Partial):
            stored.update((TASK + name, None) for name in new.tasks.absent)
        if isinstance(new.subtasks, Partial):
            stored.update((SUBTASK + name, None) for name in new.subtasks.absent)
        for items in (new.tasks, new.subtasks):
            if isinstance(items, Partial):
                items.cleared = False  # (done: a kept state must not clear them again)
        return Loaded(
            loaded.run_id,
            rev=str(rev + 1).encode(),
            fields=stored,
            all_tasks=loaded.all_tasks or TASK in clear or not isinstance(new.tasks, Partial),
            all_subtasks=loaded.all_subtasks or SUBTASK in clear or not isinstance(new.subtasks, Partial),
        )
