"""What the gateway reads from an OpenAI request body before routing it.

The gateway does not validate the request the way vLLM will (the pod answers with vLLM's own
errors); it only needs the text to match prefixes on, a token estimate, and whether the
client wants a stream. A body that is not a JSON object is refused here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tandem.errors import OpenAIError
from tandem.http.protocol import json_object, strip_tandem_fields
from tandem.orchestrator.scheduling.types import EnginePrompt, SchedulingRequest


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    body: bytes
    stream: bool
    scheduling: SchedulingRequest
    dropped_fields: tuple[str, ...] = ()
    """Fields only tandem may set that the client sent; `body` is without them."""


def _message_text(messages: Any) -> str:
    if not isinstance(messages, list):
        raise OpenAIError(400, "messages must be a list of chat messages", param="messages")
    parts = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise OpenAIError(400, "each chat message must be an object", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, Mapping)
            )
        parts.append(f"<{message.get('role', '')}>{content or ''}")
    return "\n".join(parts)


def _prompt_text_and_tokens(prompt: Any, chars_per_token: float) -> tuple[str, int]:
    if isinstance(prompt, str):
        return prompt, math.ceil(len(prompt) / chars_per_token)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        # Token ids: hash their decimal form; the count is exact.
        return " ".join(str(t) for t in prompt), len(prompt)
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        return _prompt_text_and_tokens(first, chars_per_token)
    return "", 0


def parse_inference_request(
    route: str,
    body: bytes,
    headers: Mapping[str, str],
    request_id: str,
    chars_per_token: float,
) -> InferenceRequest:
    """Read the routing-relevant parts of a completions or chat body."""
    payload = json_object(body)
    dropped = strip_tandem_fields(payload)
    if dropped:
        body = json.dumps(payload).encode()
    engine_prompt: EnginePrompt | None
    if route == "chat":
        text = _message_text(payload.get("messages"))
        tokens = math.ceil(len(text) / chars_per_token)
        engine_prompt = EnginePrompt(messages=tuple(payload["messages"]))
    else:
        prompt = payload.get("prompt")
        text, tokens = _prompt_text_and_tokens(prompt, chars_per_token)
        engine_prompt = _engine_prompt(prompt)
    model = payload.get("model")
    return InferenceRequest(
        body=body,
        dropped_fields=tuple(dropped),
        stream=bool(payload.get("stream")),
        scheduling=SchedulingRequest(
            request_id=request_id,
            prompt=text,
            num_prompt_tokens=tokens,
            headers=dict(headers),
            model=model if isinstance(model, str) else None,
            engine_prompt=engine_prompt,
        ),
    )


def _engine_prompt(prompt: Any) -> EnginePrompt | None:
    """A completions prompt as the engine will tokenize it (the first of several)."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return EnginePrompt(text=prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return EnginePrompt(token_ids=tuple(prompt))
    return None
