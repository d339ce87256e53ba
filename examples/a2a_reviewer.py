"""A remote reviewer for the `reviewed-draft` workflow, built with a2a-sdk: any A2A agent could stand in.

It asks who the article is for (A2A `input-required`, which Baton turns into a question in the run)
unless the run's params name an `audience`, then returns `review.md`: the draft's size, its longest
paragraph and a verdict for that audience.

    python -m examples.a2a_reviewer [--host 127.0.0.1] [--port 10001]
"""

from __future__ import annotations

import argparse
import re

import httpx
import uvicorn
from a2a.helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Message, Part
from google.protobuf import json_format
from starlette.applications import Starlette

QUESTION = "Who is the article for?"
LONG_SENTENCE = 25  # words


class Reviewer(AgentExecutor):
    """Reviews the markdown file it is sent; remembers each task's draft while it waits for an answer."""

    def __init__(self) -> None:
        self.drafts: dict[str, str] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        up = TaskUpdater(event_queue, task.id, task.context_id)
        say = lambda text: up.new_agent_message([Part(text=text)])  # noqa: E731
        draft, params, text = await read(context.message)
        draft = self.drafts.pop(task.id, "") or draft
        audience = params.get("audience") or (text if context.current_task is not None else "")
        if not audience:
            self.drafts[task.id] = draft
            await up.requires_input(say(QUESTION))
            return
        await up.start_work(say(f"reviewing {len(draft.split())} words for {audience}"))
        await up.add_artifact(
            [Part(raw=review(draft, audience).encode(), filename="review.md", media_type="text/markdown")],
            name="review",
        )
        await up.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is not None:
            self.drafts.pop(task.id, None)
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()


async def read(message: Message) -> tuple[str, dict, str]:
    """The message's markdown draft (the last file part), its params (data part) and its text."""
    draft, params, texts = "", {}, []
    for part in message.parts:
        if part.HasField("text"):
            texts.append(part.text)
        elif part.HasField("data"):
            value = json_format.MessageToDict(part.data)
            params.update(value if isinstance(value, dict) else {})
        elif part.HasField("raw") and part.filename.endswith(".md"):
            draft = part.raw.decode("utf-8", "replace")
        elif part.HasField("url") and part.filename.endswith(".md"):
            async with httpx.AsyncClient(timeout=30) as http:
                draft = (await http.get(part.url)).text
    return draft, params, " ".join(texts).strip()


def review(draft: str, audience: str) -> str:
    paragraphs = [line for line in draft.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(paragraphs)) if s.strip()]
    long = [s for s in sentences if len(s.split()) > LONG_SENTENCE]
    longest = max(paragraphs, key=len, default="")
    verdict = f"Fits {audience}."
    if long:
        verdict = f"For {audience}, split the {len(long)} sentence(s) over {LONG_SENTENCE} words."
    return (
        f"# Review for {audience}\n\n"
        f"- {len(draft.split())} words, {len(paragraphs)} paragraphs, {len(sentences)} sentences\n"
        f"- longest paragraph: {len(longest.split())} words\n\n"
        f"{verdict}\n"
    )


def card(url: str) -> AgentCard:
    return AgentCard(
        name="reviewer",
        description="Reviews a markdown draft for clarity, for the audience it is told.",
        version="1.0.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain", "text/markdown"],
        default_output_modes=["text/markdown"],
        skills=[AgentSkill(id="review", name="review", description="Review a draft.", tags=["review"])],
    )


def build_app(url: str) -> Starlette:
    """The reviewer at `url` (its card at `<url>.well-known/agent-card.json`)."""
    the_card = card(url.rstrip("/") + "/")
    handler = DefaultRequestHandler(
        agent_executor=Reviewer(), task_store=InMemoryTaskStore(), agent_card=the_card
    )
    return Starlette(routes=[*create_agent_card_routes(the_card), *create_jsonrpc_routes(handler, "/")])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.a2a_reviewer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10001)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(f"http://{args.host}:{args.port}/"), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
