"""`session-affinity-scorer`: keep a session on the endpoint that served it before.

With `strategy: encoded_endpoint_header` the client echoes back the `x-session-token` the
gateway returned (the base64 of the endpoint's name); with `session_id` the client sends a
stable `x-session-id` and the scorer remembers its endpoint. The bound endpoint scores 1,
the others 0 (llm-d/llm-d-router: scorer/sessionaffinity).
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import EndpointView, SchedulingResult

SESSION_TOKEN_HEADER = "x-session-token"
SESSION_ID_HEADER = "x-session-id"


def encode_session_token(endpoint_name: str) -> str:
    return base64.urlsafe_b64encode(endpoint_name.encode()).decode()


def decode_session_token(token: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


class SessionAffinityParameters(PluginParameters):
    strategy: Literal["encoded_endpoint_header", "session_id"] = "encoded_endpoint_header"
    profileName: str | None = None
    maxSessions: int = Field(100_000, ge=1)


class SessionAffinityScorer(Plugin):
    type_name = "session-affinity-scorer"
    Parameters = SessionAffinityParameters
    parameters: SessionAffinityParameters

    def __init__(self, name: str, parameters: SessionAffinityParameters) -> None:
        super().__init__(name, parameters)
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        bound = self._bound_endpoint(cycle.request.headers)
        return {view.name: 1.0 if view.name == bound else 0.0 for view in endpoints}

    @property
    def encodes_session_header(self) -> bool:
        return self.parameters.strategy == "encoded_endpoint_header"

    def remember(self, headers: Mapping[str, str], result: SchedulingResult) -> None:
        """Bind a `session_id` session to the endpoint that served it in this scorer's
        profile (`profileName`, the decode profile by default); a bounded LRU."""
        session_id = headers.get(SESSION_ID_HEADER)
        if self.parameters.strategy != "session_id" or not session_id:
            return
        endpoint_name = result.decode.best.name
        prefill = result.prefill
        if prefill is not None and self.parameters.profileName == prefill.profile:
            endpoint_name = prefill.best.name
        elif self.parameters.profileName not in (None, result.decode.profile):
            return
        self._sessions[session_id] = endpoint_name
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self.parameters.maxSessions:
            self._sessions.popitem(last=False)

    def _bound_endpoint(self, headers: Mapping[str, str]) -> str | None:
        if self.parameters.strategy == "session_id":
            session_id = headers.get(SESSION_ID_HEADER)
            return self._sessions.get(session_id) if session_id else None
        token = headers.get(SESSION_TOKEN_HEADER)
        return decode_session_token(token) if token else None
