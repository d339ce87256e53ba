"""The contract between the router and a classifier agent (python handler or model)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .events import Usage


class ClassifyRequest(BaseModel):
    """What a classifier is asked."""

    text: str = Field(description="The request text (cut to the router's limit).")
    labels: list[str] = Field(description="The labels the workflow routes.")
    run_id: str | None = None


class Classification(BaseModel):
    """What a classifier answers."""

    label: str = Field(description="One of the requested labels (anything else goes to the fallback).")
    confidence: float = Field(ge=0, le=1, description="How sure the classifier is, 0..1.")
    spent: Usage | None = Field(
        None, description="Model tokens/cost the classification spent, if a model was asked."
    )
