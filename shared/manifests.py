"""Refs by name, too many for one event, kept as a JSON object in the bucket and named in the event
instead: a submission's inputs (`RunSubmitted.inputs_manifest`), a task's inputs
(`TaskAssigned.inputs_manifest`) and a task's outputs (`TaskCompleted.outputs_manifest`). Events stay
under `BATON_MAX_EVENT_BYTES` (some 300 refs at the 64 KiB default) whatever a run's width."""

from __future__ import annotations

import json

from pydantic import TypeAdapter, ValidationError

from .events import ObjectRef
from .storage import Storage

MAX_BYTES = 64 * 2**20  # the most of a manifest anyone reads (some 300,000 refs)
_REFS = TypeAdapter(dict[str, ObjectRef])


def encode(refs: dict[str, ObjectRef]) -> bytes:
    return json.dumps({name: ref.model_dump(mode="json") for name, ref in refs.items()}).encode()


async def read(storage: Storage, ref: ObjectRef, what: str, *, under: str) -> dict[str, ObjectRef]:
    """The refs a manifest holds (its exact version, up to `MAX_BYTES`), if its key lies under `under`
    (the run's prefix the kind of manifest belongs in). Raises ObjectMissingError, ObjectTooLargeError,
    or ValueError naming `what`, its key and the first thing wrong."""
    if not ref.key.startswith(under):
        raise ValueError(f"{what} {ref.key} is not under {under}")
    body = await storage.get(ref, max_bytes=MAX_BYTES)
    try:
        return _REFS.validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "its top level"
        raise ValueError(
            f"{what} {ref.key} is not a JSON object of ObjectRefs by name: {where}: {first['msg']}"
        ) from exc
