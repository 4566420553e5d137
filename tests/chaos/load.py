"""Load for chaos tests: a bounded number of streamed completions on a schedule, each ending
in exactly one outcome.

- **completed**: a 200 stream with tokens, ending in [DONE] and no error event;
- **clear error**: an answer in OpenAI's error shape — a 4xx/5xx JSON body, or an SSE error
  event followed by [DONE] after the stream had started;
- **lost**: anything else — no answer within the bound, a connection dropped mid-answer, a
  stream cut without an error event or [DONE], a body that is not OpenAI's shape.

A connection refused before anything was sent (the orchestrator restarting) is retried, as a
client would, for up to `connect_retry_s`, and counted; only if it never connects does the
request count as lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tandem.kvcache.tokenizer import SYNTHETIC_WORDS

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(slots=True)
class Outcome:
    index: int
    sent_at: float
    kind: str = "lost"
    detail: str = ""
    connect_retries: int = 0


@dataclass(slots=True)
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def counts(self) -> dict[str, int]:
        tally = Counter(o.kind for o in self.outcomes)
        return {
            "sent": self.sent,
            "completed": tally["completed"],
            "clear_errors": tally["clear_error"],
            "lost": tally["lost"],
            "connect_retries": sum(o.connect_retries for o in self.outcomes),
        }

    def describe(self) -> str:
        """Every request that did not complete, for assertion messages."""
        return "\n".join(
            f"#{o.index} sent {o.sent_at:.2f}s: {o.kind} {o.detail}"
            for o in self.outcomes
            if o.kind != "completed"
        )


def prompt(index: int, tokens: int) -> str:
    """A prompt no other request shares a prefix block with."""
    return " ".join(SYNTHETIC_WORDS[(index * 131 + 7 * i) % 1000] for i in range(tokens))


async def run_load(
    url: str,
    *,
    requests: int,
    rate: float,
    prompt_tokens: tuple[int, ...] = (80, 1_500),
    max_tokens: int = 40,
    timeout_s: float = 60.0,
    connect_retry_s: float = 30.0,
    started: float | None = None,
) -> LoadResult:
    """Send `requests` completions at `rate` per wall second, prompt lengths cycling through
    `prompt_tokens`; times are seconds from `started` (default: now)."""
    origin = time.monotonic() if started is None else started
    result = LoadResult()
    # A connection per request: a pooled one the server closed while restarting would look
    # like a request lost after sending, when none was sent.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def one(index: int) -> None:
            await asyncio.sleep(max(0.0, index / rate - (time.monotonic() - origin)))
            outcome = Outcome(index, time.monotonic() - origin)
            result.outcomes.append(outcome)
            body = {
                "model": MODEL,
                "prompt": prompt(index, prompt_tokens[index % len(prompt_tokens)]),
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "stream": True,
            }
            deadline = time.monotonic() + connect_retry_s
            while True:
                try:
                    await asyncio.wait_for(_stream(client, url, body, outcome), timeout_s)
                    return
                except httpx.ConnectError as exc:
                    if time.monotonic() > deadline:
                        outcome.kind, outcome.detail = "lost", f"never connected: {exc!r}"
                        return
                    outcome.connect_retries += 1
                    await asyncio.sleep(0.2)
                except TimeoutError:
                    outcome.kind, outcome.detail = "lost", f"no end within {timeout_s} s"
                    return
                except (httpx.HTTPError, ValueError) as exc:
                    outcome.kind, outcome.detail = "lost", repr(exc)
                    return

        await asyncio.gather(*(one(i) for i in range(requests)))
    result.outcomes.sort(key=lambda o: o.index)
    return result


async def _stream(
    client: httpx.AsyncClient, url: str, body: dict[str, object], outcome: Outcome
) -> None:
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            payload = json.loads(await response.aread())
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict) and error.get("message") and error.get("type"):
                outcome.kind = "clear_error"
                outcome.detail = f"{response.status_code} {error['message'][:200]}"
            else:
                outcome.kind, outcome.detail = "lost", f"{response.status_code} not OpenAI's shape"
            return
        tokens, error_event, done = 0, None, False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                error_event = event["error"]
            elif event.get("choices"):
                tokens += 1
        if done and error_event is not None:
            outcome.kind = "clear_error"
            outcome.detail = f"mid-stream: {str(error_event.get('message'))[:200]}"
        elif done and tokens:
            outcome.kind = "completed"
        else:
            outcome.kind = "lost"
            outcome.detail = f"stream ended after {tokens} chunks without [DONE]"
