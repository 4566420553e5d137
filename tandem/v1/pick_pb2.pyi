from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_DISAGGREGATE: _ClassVar[Decision]
    DECISION_LOCAL: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
DECISION_DISAGGREGATE: Decision
DECISION_LOCAL: Decision

class PickRequest(_message.Message):
    __slots__ = ("model", "text", "token_ids", "chat", "headers", "request_id", "include_scores")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SCORES_FIELD_NUMBER: _ClassVar[int]
    model: str
    text: str
    token_ids: TokenIds
    chat: ChatMessages
    headers: _containers.ScalarMap[str, str]
    request_id: str
    include_scores: bool
    def __init__(self, model: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., chat: _Optional[_Union[ChatMessages, _Mapping]] = ..., headers: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ..., include_scores: _Optional[bool] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class PickResponse(_message.Message):
    __slots__ = ("request_id", "decode", "prefill", "decision", "reason", "scores")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    decode: Endpoint
    prefill: _containers.RepeatedCompositeFieldContainer[Endpoint]
    decision: Decision
    reason: str
    scores: _containers.RepeatedCompositeFieldContainer[ProfileScores]
    def __init__(self, request_id: _Optional[str] = ..., decode: _Optional[_Union[Endpoint, _Mapping]] = ..., prefill: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., decision: _Optional[_Union[Decision, str]] = ..., reason: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[ProfileScores, _Mapping]]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("name", "address", "score")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    score: float
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ProfileScores(_message.Message):
    __slots__ = ("profile", "endpoints")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    profile: str
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointScores]
    def __init__(self, profile: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[EndpointScores, _Mapping]]] = ...) -> None: ...

class EndpointScores(_message.Message):
    __slots__ = ("endpoint", "scorers")
    class ScorersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    scorers: _containers.ScalarMap[str, float]
    def __init__(self, endpoint: _Optional[str] = ..., scorers: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: str
    def __init__(self, role: _Optional[str] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointStatus]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[EndpointStatus, _Mapping]]] = ...) -> None: ...

class EndpointStatus(_message.Message):
    __slots__ = ("name", "address", "role", "healthy", "in_flight", "in_flight_tokens", "engine", "last_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    role: str
    healthy: bool
    in_flight: int
    in_flight_tokens: int
    engine: EngineState
    last_error: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., role: _Optional[str] = ..., healthy: _Optional[bool] = ..., in_flight: _Optional[int] = ..., in_flight_tokens: _Optional[int] = ..., engine: _Optional[_Union[EngineState, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class EngineState(_message.Message):
    __slots__ = ("waiting", "running", "kv_usage", "age_seconds")
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    waiting: int
    running: int
    kv_usage: float
    age_seconds: float
    def __init__(self, waiting: _Optional[int] = ..., running: _Optional[int] = ..., kv_usage: _Optional[float] = ..., age_seconds: _Optional[float] = ...) -> None: ...
