"""A scripted OpenAI-compatible endpoint on a real loopback socket (aiohttp), for the failure cases a
real model cannot be made to produce on demand: timeouts, 429, 5xx, 400, 401 and malformed replies.

Each path prefix is its own endpoint (`{url}/<name>/v1/chat/completions`) with its own script: a list of
steps, one per request, the last one repeating. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from baton.servers import free_port


@dataclass
class Step:
    status: int = 200
    body: Any = None  # dict -> JSON; str -> text as is
    delay: float = 0.0  # seconds before answering (longer than the client's timeout = a timeout)
    headers: dict = field(default_factory=dict)


def reply(content: str, prompt_tokens: int = 11, completion_tokens: int = 7) -> Step:
    """A 200 chat completion whose message is `content`."""
    return Step(
        body={
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": "fake-model",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def error(status: int, message: str, **headers: str) -> Step:
    """An OpenAI-style error body."""
    return Step(status=status, body={"error": {"message": message, "type": "invalid_request_error"}},
                headers=headers)


class FakeEndpoint:
    """`async with FakeEndpoint() as fake:`; `fake.script(name, [steps])`; `fake.base_url(name)`."""

    def __init__(self, port: int | None = None, record: bool = True) -> None:
        self.scripts: dict[str, list[Step]] = {}
        self.requests: dict[str, list[dict]] = {}
        self.port = port or free_port()
        self.record = record  # (the benchmark's endpoint keeps nothing: it answers 10,000s of requests)
        self._runner: web.AppRunner | None = None

    def base_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}/v1"

    def script(self, name: str, steps: list[Step]) -> str:
        self.scripts[name] = list(steps)
        self.requests[name] = []
        return self.base_url(name)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.json()
        if not self.record:
            return await self._answer(name)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.setdefault(name, []).append(
            {
                "json": body,
                "authorization": request.headers.get("Authorization"),
                "connection": peer[1] if peer else None,  # the client's port: one per connection
            }
        )
        return await self._answer(name)

    async def _answer(self, name: str) -> web.Response:
        steps = self.scripts.get(name) or [error(404, f"no script for {name!r}")]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if step.delay:
            await asyncio.sleep(step.delay)
        if isinstance(step.body, str):
            return web.Response(status=step.status, text=step.body, headers=step.headers)
        return web.Response(
            status=step.status,
            text=json.dumps(step.body),
            content_type="application/json",
            headers=step.headers,
        )

    async def __aenter__(self) -> FakeEndpoint:
        app = web.Application()
        app.router.add_post("/{name}/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def serve(port: int) -> None:
    """The benchmark's model endpoint (`/answer/v1`): every request answered at once with a short reply."""
    async with FakeEndpoint(port, record=False) as fake:
        fake.script("answer", [reply("A short answer from the benchmark's endpoint.")])
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve the benchmark's OpenAI-compatible endpoint.")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args(argv).port))


if __name__ == "__main__":
    main()
