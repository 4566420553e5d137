"""`tandem fuzz`: hostile and malformed requests against the gateway's and the sidecar's
routes, generated with hypothesis, each checked against what a client is promised.

Cases mix requests shaped like OpenAI's (every field of a completion or chat request, with
values in and out of range, of the wrong type, or missing), arbitrary JSON, bytes that are
not JSON (truncated, invalid UTF-8, 100,000-digit numbers, nesting past any parser's stack),
unknown routes and methods, and the headers tandem reads (`x-request-id`,
`x-tandem-priority`, `x-prefiller-host-port`, content types). A case passes when:

- an answer comes, whole, within the time bound (no dropped connection, no hang);
- its status is below 500 (the pods are healthy: no input may make tandem fail);
- an error answer is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`;
- a 200 is a JSON body, or an SSE stream ending in `data: [DONE]`.

Every address a case names is on 127.0.0.0/8, and the sidecar's prefill targets are the
deployment's own prefill pod or loopback ports it does not allow.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tandem.logs import EventLog

logger = EventLog(__name__)

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PREFILLER_HEADER = "x-prefiller-host-port"
INFERENCE_ROUTES = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True, slots=True)
class FuzzTargets:
    """Where to send cases: the orchestrator, a decode pod's sidecar, the prefill pod the
    sidecar may use."""

    gateway: str
    sidecar: str | None = None
    prefill_address: str | None = None


@dataclass(frozen=True, slots=True)
class Case:
    target: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def describe(self) -> str:
        shown = self.body[:300].decode("utf-8", errors="replace")
        return f"{self.target} {self.method} {self.path} headers={self.headers} body={shown!r}"


@dataclass(slots=True)
class FuzzReport:
    cases: int = 0
    seed: int = 0
    seconds: float = 0.0
    by_target: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    violations: int = 0
    by_violation: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, str]] = field(default_factory=list)
    """The first violations of each kind, with the case that caused it."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- strategies ---------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
_TOKENS = st.integers(min_value=-5, max_value=64) | st.sampled_from([0, 2**31, 2**63, 10**9])
_LOOPBACK_HOST = st.integers(min_value=1, max_value=254).map(lambda last: f"127.0.0.{last}")


def _maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value, or one of any type."""
    return st.one_of(values, values, values, _SCALARS)


_KV_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "do_remote_prefill": st.booleans(),
        "do_remote_decode": st.booleans(),
        "remote_host": _LOOPBACK_HOST,
        "remote_port": st.integers(min_value=1, max_value=65535),
        "remote_engine_id": st.text(max_size=10),
        "remote_block_ids": st.lists(st.lists(st.integers(0, 100), max_size=4), max_size=3),
        "remote_request_id": st.text(max_size=10),
    },
)
_SAMPLING = {
    "model": _maybe(st.sampled_from([MODEL, "no-such-model", ""])),
    "max_tokens": _maybe(_TOKENS),
    "max_completion_tokens": _maybe(_TOKENS),
    "min_tokens": _maybe(_TOKENS),
    "temperature": _maybe(st.floats(min_value=-1, max_value=3)),
    "top_p": _maybe(st.floats(min_value=-1, max_value=2)),
    "top_k": _maybe(st.integers(-2, 100)),
    "n": _maybe(st.integers(-1, 3)),
    "stream": _maybe(st.booleans()),
    "stream_options": _maybe(
        st.fixed_dictionaries(
            {},
            optional={
                "include_usage": _maybe(st.booleans()),
                "continuous_usage_stats": _maybe(st.booleans()),
            },
        )
    ),
    "ignore_eos": _maybe(st.booleans()),
    "logprobs": _maybe(st.integers(-1, 5)),
    "echo": _maybe(st.booleans()),
    "stop": _maybe(st.lists(st.text(max_size=5), max_size=3)),
    "seed": _maybe(st.integers(-(2**64), 2**64)),
    "request_id": _maybe(st.text(max_size=20)),
    "return_token_ids": _maybe(st.booleans()),
    "kv_transfer_params": _maybe(_KV_PARAMS),
    "unknown_field": _JSON,
}
_PROMPT = st.one_of(
    st.text(max_size=200),
    st.lists(st.integers(-10, 200_000), max_size=30),
    st.lists(st.text(max_size=30), max_size=3),
    st.lists(st.lists(st.integers(0, 1000), max_size=5), max_size=3),
    _JSON,
)
_CONTENT = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "x"])}, optional={"text": _SCALARS}
        ),
        max_size=3,
    ),
    _SCALARS,
)
_MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": _maybe(st.sampled_from(["system", "user", "assistant", "tool", "nobody"])),
        "content": _CONTENT,
        "name": st.text(max_size=10),
    },
)
_COMPLETION = st.fixed_dictionaries({}, optional={**_SAMPLING, "prompt": _PROMPT})
_CHAT = st.fixed_dictionaries(
    {}, optional={**_SAMPLING, "messages": _maybe(st.lists(_MESSAGE, max_size=4))}
)
_RAW = st.one_of(
    st.binary(max_size=300),
    st.just(b""),
    st.just(b"{" * 100_000),
    st.just(b"[" * 50_000 + b"]" * 50_000),
    st.just(b'{"prompt": ' + b"9" * 100_000 + b"}"),
    st.just(b'{"prompt": "\xff\xfe", "max_tokens": 2}'),
    st.text(max_size=100).map(lambda text: ('{"prompt": "' + text).encode()),
)


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


# Requests a pod serves, so that cases reach the streaming, disaggregation and KV paths too;
# one hostile field at most (a client's kv_transfer_params, an unknown field).
_SERVED_OPTIONS = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "temperature": st.floats(0, 2),
    "ignore_eos": st.booleans(),
    "request_id": st.text(st.characters(min_codepoint=48, max_codepoint=122), max_size=12),
}
_SERVED_BASE = {"model": st.just(MODEL), "max_tokens": st.integers(1, 16)}
_HOSTILE = st.one_of(
    st.fixed_dictionaries({}),
    st.fixed_dictionaries({"kv_transfer_params": _KV_PARAMS}),
    st.fixed_dictionaries({"unknown_field": _JSON}),
)
_SERVED_PROMPT = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=3_000),
    st.lists(st.integers(0, 1000), min_size=1, max_size=2_000),
)
_SERVED_COMPLETION = st.builds(
    lambda body, hostile: {**body, **hostile},
    st.fixed_dictionaries({**_SERVED_BASE, "prompt": _SERVED_PROMPT}, optional=_SERVED_OPTIONS),
    _HOSTILE,
)
_SERVED_CHAT = st.builds(
    lambda body, hostile: {**body, **hostile},
    st.fixed_dictionaries(
        {
            **_SERVED_BASE,
            "messages": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["system", "user", "assistant"]),
                     "content": st.text(max_size=2_000)}
                ),
                min_size=1, max_size=3,
            ),
        },
        optional=_SERVED_OPTIONS,
    ),
    _HOSTILE,
)  # fmt: skip


def _body(route: str) -> st.SearchStrategy[bytes]:
    chat = route.endswith("chat/completions")
    shaped, served = (_CHAT, _SERVED_CHAT) if chat else (_COMPLETION, _SERVED_COMPLETION)
    return st.one_of(
        served.map(_encode), served.map(_encode), shaped.map(_encode), shaped.map(_encode),
        _JSON.map(_encode), _RAW,
    )  # fmt: skip


def _headers(prefill_targets: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, str]]:
    # What HTTP allows in a header value: visible ASCII, spaces inside but not around it.
    printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
        str.strip
    )
    return st.fixed_dictionaries(
        # Mostly what clients send, so that cases get past the first check.
        {
            "content-type": st.sampled_from(
                ["application/json"] * 12
                + ["text/plain", "application/x-www-form-urlencoded", "", "application/JSON"]
            )
        },
        optional={
            "x-request-id": printable,
            "x-tandem-priority": st.sampled_from(["critical", "standard", "sheddable"] * 3)
            | st.sampled_from(["low", "CRITICAL", ""])
            | printable,
            PREFILLER_HEADER: prefill_targets,
        },
    )


def cases(targets: FuzzTargets) -> st.SearchStrategy[Case]:
    """Cases for the gateway (all routes) and, when given, the sidecar's inference routes."""
    loopback_target = st.builds(
        lambda host, port: f"{host}:{port}", _LOOPBACK_HOST, st.integers(1, 65535)
    )
    junk_target = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(
        str.strip
    )
    allowed = [targets.prefill_address] if targets.prefill_address else []
    prefill_targets = st.one_of(
        loopback_target, junk_target, *(st.just(a) for a in allowed * 4),
        *(st.just(f"{a},{a}") for a in allowed),
    )  # fmt: skip

    def inference(target: str) -> st.SearchStrategy[Case]:
        return st.sampled_from(INFERENCE_ROUTES).flatmap(
            lambda route: st.builds(
                Case,
                st.just(target),
                st.just("POST"),
                st.just(route),
                _headers(prefill_targets),
                _body(route),
            )
        )

    other_paths = st.one_of(
        st.sampled_from(["/v1/models", "/health", "/ready", "/metrics", "/v1/embeddings", "/"]),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
            lambda path: "/" + path.lstrip("/").replace("?", "").replace("#", "")
        ),
    )
    other = st.builds(
        Case, st.just("gateway"), st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        other_paths, _headers(prefill_targets), _RAW | _JSON.map(_encode),
    )  # fmt: skip
    choices = [inference("gateway"), inference("gateway"), other]
    if targets.sidecar is not None:
        choices.append(inference("sidecar"))
    return st.one_of(*choices)


# -- checking -----------------------------------------------------------------------------


def check(case: Case, send: Callable[[Case], tuple[int, httpx.Headers, bytes]]) -> str | None:
    """Send one case; returns the violation's kind, or None when the answer is as promised."""
    try:
        status, headers, body = send(case)
    except httpx.TimeoutException:
        return "no_answer_in_time"
    except httpx.HTTPError as exc:
        logger.warning("fuzz_connection_dropped", case=case.describe(), error=repr(exc))
        return "connection_dropped"
    if status >= 500:
        return f"status_{status}"
    if status >= 400:
        return None if _openai_error(body) else "error_not_openai_shape"
    if headers.get("content-type", "").startswith("text/event-stream"):
        return None if _complete_stream(body) else "stream_incomplete"
    if case.method == "POST" and case.path in INFERENCE_ROUTES:
        try:
            json.loads(body)
        except ValueError:
            return "body_not_json"
    return None


def _openai_error(body: bytes) -> bool:
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    error = payload.get("error") if isinstance(payload, dict) else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and {"param", "code"} <= error.keys()
    )


def _complete_stream(body: bytes) -> bool:
    events = [
        line for line in body.decode(errors="replace").splitlines() if line.startswith("data: ")
    ]
    if not events or events[-1] != "data: [DONE]":
        return False
    for event in events[:-1]:
        payload = json.loads(event[len("data: ") :])
        if "error" in payload and not _openai_error(event[len("data: ") :].encode()):
            return False
    return True


def run_fuzz(
    targets: FuzzTargets,
    *,
    cases_to_run: int,
    seed_value: int = 0,
    timeout_s: float = 30.0,
    on_case: Callable[[], None] | None = None,
    examples_per_kind: int = 3,
) -> FuzzReport:
    """Generate and check `cases_to_run` cases (seeded: the same seed, the same cases)."""
    report = FuzzReport(seed=seed_value)
    started = time.perf_counter()
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    by_target: Counter[str] = Counter()
    bases = {"gateway": targets.gateway, "sidecar": targets.sidecar or targets.gateway}

    # A connection per case: a case the server answers without reading its whole body
    # leaves a connection it closes, which must not fail the next case sent on it.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=timeout_s, limits=limits) as client:

        def send(case: Case) -> tuple[int, httpx.Headers, bytes]:
            url = bases[case.target] + case.path
            with client.stream(case.method, url, content=case.body, headers=case.headers) as reply:
                body = reply.read()
            statuses[str(reply.status_code)] += 1
            return reply.status_code, reply.headers, body

        @seed(seed_value)
        @settings(
            max_examples=cases_to_run,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(cases(targets))
        def one(case: Case) -> None:
            report.cases += 1
            by_target[case.target] += 1
            violation = check(case, send)
            if violation is not None:
                kinds[violation] += 1
                if kinds[violation] <= examples_per_kind:
                    report.examples.append({"violation": violation, "case": case.describe()})
            if on_case is not None:
                on_case()

        one()
    report.seconds = time.perf_counter() - started
    report.statuses = dict(sorted(statuses.items()))
    report.by_target = dict(by_target)
    report.by_violation = dict(kinds)
    report.violations = sum(kinds.values())
    return report
