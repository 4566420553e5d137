"""The Pick API (proto/tandem/v1/pick.proto): the gateway's routing decision, over gRPC.

A pick is scheduled by the same `Router` that routes the HTTP gateway's requests, from a
request read by the gateway's own `parse_inference_request`: the servicer writes the pick's
input as the OpenAI body a client would have posted, so both faces see the same prompt text,
token count and headers, and choose alike for the same state. It has no scheduling logic of
its own.

A pick is advisory: it is not counted as in flight. The orchestrator never learns when a
request that a proxy routed with Pick ends, and a count that is never released would soon
mark the endpoint saturated for everyone. The scheduler still records the prompt's prefix on
the chosen endpoints, as for every request it routes, so callers should send the request
where Pick says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

import grpc

from tandem.discovery.endpoints import Role
from tandem.errors import OpenAIError
from tandem.http.protocol import request_id_of
from tandem.orchestrator.config import OrchestratorConfig
from tandem.orchestrator.inference_request import parse_inference_request
from tandem.orchestrator.router import Router, log_placement
from tandem.orchestrator.scheduling.types import (
    PDDecision,
    ProfileResult,
    SchedulingResult,
    ScoredEndpoint,
)
from tandem.v1 import pick_pb2, pick_pb2_grpc

SERVICE_NAME: str = pick_pb2.DESCRIPTOR.services_by_name["Picker"].full_name
"""`tandem.v1.Picker`, the name gRPC health reports the service under."""

STATUS_CODES: Mapping[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The gateway's HTTP statuses as gRPC codes (googleapis/googleapis: google/rpc/code.proto,
which gives each code's HTTP equivalent)."""

DECISIONS: Mapping[PDDecision, pick_pb2.Decision] = {
    PDDecision.DISAGGREGATE: pick_pb2.DECISION_DISAGGREGATE,
    PDDecision.LOCAL: pick_pb2.DECISION_LOCAL,
}

ROLES = tuple(role.value for role in Role)


class PickService:
    """The `tandem.v1.Picker` servicer; runs on the gateway's event loop (the router is not
    thread-safe)."""

    def __init__(self, router: Router, chars_per_token: float) -> None:
        self.router = router
        self.chars_per_token = chars_per_token

    async def Pick(
        self, request: pick_pb2.PickRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pick_pb2.PickResponse:
        try:
            return self.pick(request)
        except OpenAIError as exc:
            await abort(context, exc)

    async def ListEndpoints(
        self, request: pick_pb2.ListEndpointsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pick_pb2.ListEndpointsResponse:
        try:
            return self.list_endpoints(request.role)
        except OpenAIError as exc:
            await abort(context, exc)

    def pick(self, request: pick_pb2.PickRequest) -> pick_pb2.PickResponse:
        """Schedule the request as the gateway would; raises OpenAIError (400, 429, 503)."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        request_id = request.request_id or request_id_of(headers)
        route, body = openai_body(request)
        parsed = parse_inference_request(route, body, headers, request_id, self.chars_per_token)
        result = self.router.schedule(parsed.scheduling)
        log_placement("pick", request_id, result)
        return pick_pb2.PickResponse(
            request_id=request_id,
            decode=picked(result.decode.best),
            prefill=[picked(target) for target in result.prefill_targets],
            decision=DECISIONS[result.decision],
            reason=result.reason,
            scores=profile_scores(result) if request.include_scores else [],
        )

    def list_endpoints(self, role: str) -> pick_pb2.ListEndpointsResponse:
        """Every known endpoint with the given role label (any when empty)."""
        if role and role not in ROLES:
            raise OpenAIError(
                400, f"unknown role {role!r}: give one of {', '.join(ROLES)}, or none for all"
            )
        now = self.router.clock()
        store = self.router.store
        statuses = []
        for endpoint in store.endpoints():
            state = store.state(endpoint.name)
            if state is None or (role and endpoint.role != role):
                continue
            status = pick_pb2.EndpointStatus(
                name=endpoint.name,
                address=endpoint.address,
                role=endpoint.role or "",
                healthy=state.healthy,
                in_flight=state.in_flight,
                in_flight_tokens=state.in_flight_tokens,
                last_error=state.last_error or "",
            )
            if state.metrics is not None:
                status.engine.CopyFrom(
                    pick_pb2.EngineState(
                        waiting=state.metrics.waiting,
                        running=state.metrics.running,
                        kv_usage=state.metrics.kv_usage,
                        age_seconds=max(0.0, now - state.metrics.scraped_at),
                    )
                )
            statuses.append(status)
        return pick_pb2.ListEndpointsResponse(endpoints=statuses)


def openai_body(request: pick_pb2.PickRequest) -> tuple[str, bytes]:
    """The route and JSON body a client would have posted to the gateway for this pick."""
    payload: dict[str, object] = {"model": request.model} if request.model else {}
    route = "completions"
    prompt = request.WhichOneof("prompt")
    if prompt == "text":
        payload["prompt"] = request.text
    elif prompt == "token_ids":
        payload["prompt"] = list(request.token_ids.ids)
    elif prompt == "chat":
        route = "chat"
        payload["messages"] = [
            {"role": m.role, "content": m.content} for m in request.chat.messages
        ]
    else:
        raise OpenAIError(
            400,
            "PickRequest has no prompt: set text, token_ids or chat (the scheduler matches the "
            "prompt against the prefixes the pods hold)",
        )
    return route, json.dumps(payload).encode()


def picked(target: ScoredEndpoint) -> pick_pb2.Endpoint:
    endpoint = target.view.endpoint
    return pick_pb2.Endpoint(name=endpoint.name, address=endpoint.address, score=target.score)


def profile_scores(result: SchedulingResult) -> list[pick_pb2.ProfileScores]:
    """Each profile's raw scorer outputs, turned from per-scorer to per-endpoint."""
    profiles: list[ProfileResult] = [p for p in (result.prefill, result.decode) if p is not None]
    out = []
    for profile in profiles:
        by_endpoint: dict[str, dict[str, float]] = {}
        for scorer, scores in profile.scores.items():
            for endpoint, score in scores.items():
                by_endpoint.setdefault(endpoint, {})[scorer] = score
        out.append(
            pick_pb2.ProfileScores(
                profile=profile.profile,
                endpoints=[
                    pick_pb2.EndpointScores(endpoint=name, scorers=scorers)
                    for name, scorers in by_endpoint.items()
                ],
            )
        )
    return out


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: OpenAIError) -> NoReturn:
    """End the call with the gRPC code of the gateway's HTTP status, and its message."""
    code = STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)
    metadata = tuple((name, value) for name, value in error.headers.items())
    await context.abort(code, error.message, trailing_metadata=metadata)


def add_to_server(server: grpc.aio.Server, router: Router, config: OrchestratorConfig) -> None:
    """Serve the Picker on `server`, picking with `router`."""
    service = PickService(router, config.gateway.chars_per_token)
    pick_pb2_grpc.add_PickerServicer_to_server(service, server)
