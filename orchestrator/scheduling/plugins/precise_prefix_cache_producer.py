"""`precise-prefix-cache-producer`: prefix matches from the engines' own KV events.

The orchestrator subscribes to every endpoint's KV events (`orchestrator/kv_events.py`) and
keeps a `PreciseIndex` of which endpoint holds which block. For a request, the prompt is
tokenized with the model's tokenizer and hashed in the engine's blocks, exactly as the engine
will (`kvcache`), and matched against that index: `prefix-cache-scorer` and the P/D deciders
then read exact cached-token counts for every endpoint whose event stream is whole, and the
approximate index's guess for the others. A routed request's blocks are entered
speculatively on the endpoints that will compute them, for `speculativeTTL`.

Parameters follow llm-d's plugin of the same type (llm-d/llm-d-router:
pkg/epp/framework/plugins/requestcontrol/dataproducer/preciseprefixcache) where they exist:
`tokenProcessorConfig.blockSize` (used until an endpoint's events say its own) and
`.hashSeed` (the engines' `PYTHONHASHSEED`, "" for vLLM's default), `kvEventsConfig.
topicFilter` and `.podDiscoveryConfig.socketPort` (5557, vLLM's default publisher port),
`speculativeIndexing` and `speculativeTTL` ("2s"), `indexerConfig.kvBlockIndexConfig.
inMemoryConfig.size` (held hashes before the largest endpoint is forgotten). tandem's own:
`kvEventsConfig.replaySocketPort` (5558; the engines' `replay_endpoint`, unset: no replay),
`staleAfter` (events missing this long after a request was routed: use the approximate index
there), `tokenizer` ("synthetic", the simulated pod's, or a `tokenizer.json` path) and
`chatTemplate` ("chatml", the simulated pod's rendering; unset: chat requests use the
approximate index). Endpoints may override the ports with the labels
`tandem.ai/kv-events-port` and `tandem.ai/kv-events-replay-port`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tandem.discovery.endpoints import Endpoint
from tandem.kvcache.hashing import DEFAULT_HASH_SEED, external_prompt_hashes, none_hash
from tandem.kvcache.tokenizer import SyntheticTokenizer, Tokenizer, load_tokenizer, render_chat
from tandem.orchestrator.scheduling.framework import PreciseMatcher
from tandem.orchestrator.scheduling.precise_index import PreciseIndex
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import EnginePrompt, SchedulingRequest

KV_EVENTS_PORT_LABEL = "tandem.ai/kv-events-port"
KV_EVENTS_REPLAY_PORT_LABEL = "tandem.ai/kv-events-replay-port"
DEFAULT_REPLAY_PORT = 5558
_TOKENIZED_KEPT = 4096
"""Prompts whose tokens and block hashes are remembered (a retry, a repeated prompt)."""
_K = TypeVar("_K")
_V = TypeVar("_V")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenProcessorConfig(_Strict):
    blockSize: int = Field(16, ge=1)
    hashSeed: str = ""


class PodDiscoveryConfig(_Strict):
    socketPort: int = Field(5557, ge=1, le=65535)


class KVEventsConfig(_Strict):
    topicFilter: str = ""
    podDiscoveryConfig: PodDiscoveryConfig = Field(default_factory=PodDiscoveryConfig)
    replaySocketPort: int | None = Field(DEFAULT_REPLAY_PORT, ge=1, le=65535)


class InMemoryConfig(_Strict):
    size: int = Field(50_000_000, ge=1)


class KVBlockIndexConfig(_Strict):
    inMemoryConfig: InMemoryConfig = Field(default_factory=InMemoryConfig)


class IndexerConfig(_Strict):
    kvBlockIndexConfig: KVBlockIndexConfig = Field(default_factory=KVBlockIndexConfig)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


def parse_duration(value: str | float) -> float:
    """Seconds from a number or a Go-style duration ("2s", "500ms", "1m")."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value.strip())
    if match is None:
        raise ValueError(f"not a duration: {value!r} (e.g. 2s, 500ms)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


class PreciseParameters(PluginParameters):
    tokenProcessorConfig: TokenProcessorConfig = Field(default_factory=TokenProcessorConfig)
    kvEventsConfig: KVEventsConfig = Field(default_factory=KVEventsConfig)
    indexerConfig: IndexerConfig = Field(default_factory=IndexerConfig)
    speculativeIndexing: bool = True
    speculativeTTL: str | float = "2s"
    staleAfter: str | float = "5s"
    tokenizer: str = "synthetic"
    chatTemplate: str | None = "chatml"

    @field_validator("speculativeTTL", "staleAfter")
    @classmethod
    def _duration(cls, value: str | float) -> str | float:
        parse_duration(value)
        return value

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, value: str) -> str:
        if value != "synthetic" and not Path(value).is_file():
            raise ValueError(f"tokenizer must be 'synthetic' or a tokenizer.json file: {value!r}")
        return value

    @field_validator("chatTemplate")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value not in (None, "chatml"):
            raise ValueError("chatTemplate must be chatml or unset")
        return value


class PrecisePrefixCacheProducer(Plugin):
    type_name = "precise-prefix-cache-producer"
    Parameters = PreciseParameters
    parameters: PreciseParameters

    def __init__(self, name: str, parameters: PluginParameters) -> None:
        super().__init__(name, parameters)
        p = self.parameters
        self.index = PreciseIndex(
            speculative_ttl_s=parse_duration(p.speculativeTTL),
            stale_after_s=parse_duration(p.staleAfter),
            max_blocks=p.indexerConfig.kvBlockIndexConfig.inMemoryConfig.size,
        )
        self._tokenizer: Tokenizer = load_tokenizer(
            None if p.tokenizer == "synthetic" else p.tokenizer
        )
        seed = p.tokenProcessorConfig.hashSeed or DEFAULT_HASH_SEED
        self._root = none_hash(seed)
        self._tokenized: OrderedDict[tuple[object, ...], tuple[int, ...]] = OrderedDict()
        self._chunks: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._hashed: OrderedDict[tuple[object, ...], list[int]] = OrderedDict()

    # -- where the events are -------------------------------------------------------------

    def events_endpoint(self, endpoint: Endpoint) -> str:
        """The endpoint's KV event publisher, as a ZMQ address to connect to."""
        port = endpoint.labels.get(KV_EVENTS_PORT_LABEL)
        default = self.parameters.kvEventsConfig.podDiscoveryConfig.socketPort
        return f"tcp://{_zmq_host(endpoint.host)}:{int(port) if port else default}"

    def replay_endpoint(self, endpoint: Endpoint) -> str | None:
        port = endpoint.labels.get(KV_EVENTS_REPLAY_PORT_LABEL)
        replay = int(port) if port else self.parameters.kvEventsConfig.replaySocketPort
        return None if replay is None else f"tcp://{_zmq_host(endpoint.host)}:{replay}"

    @property
    def topic(self) -> bytes:
        return self.parameters.kvEventsConfig.topicFilter.encode()

    def inherit(self, previous: PreciseMatcher) -> None:
        """A reloaded configuration keeps what the events taught (and the subscriptions)."""
        self.index = previous.index

    # -- naming a request's blocks as the engine will --------------------------------------

    def block_hashes(self, request: SchedulingRequest, block_size: int) -> list[int] | None:
        """The request's prompt blocks as the engine names them, or None when its prompt
        cannot be tokenized as the engine does (chat without a known template)."""
        prompt = request.engine_prompt
        tokens = self._tokens(prompt)
        if tokens is None or prompt is None:
            return None
        # Keyed by what the client sent: a text's hash is computed once and kept.
        key = (prompt.text if prompt.text is not None else tokens, block_size)
        hashes = self._hashed.get(key)
        if hashes is None:
            hashes = external_prompt_hashes(tokens, block_size, self._root)
            _remember(self._hashed, key, hashes)
        else:
            self._hashed.move_to_end(key)
        return hashes

    def _tokens(self, prompt: EnginePrompt | None) -> tuple[int, ...] | None:
        if prompt is None:
            return None
        if prompt.token_ids is not None:
            return prompt.token_ids
        if prompt.text is not None:
            key: tuple[object, ...] = ("text", prompt.text)
            text = prompt.text
        elif prompt.messages is not None and self.parameters.chatTemplate == "chatml":
            text = render_chat([dict(m) for m in prompt.messages])
            key = ("chat", text)
        else:
            return None
        tokens = self._tokenized.get(key)
        if tokens is None:
            tokenizer = self._tokenizer
            if isinstance(tokenizer, SyntheticTokenizer):  # chunks of shared prefixes repeat
                tokens = tuple(tokenizer.encode_chunked(text, self._chunk_tokens))
            else:
                tokens = tuple(tokenizer.encode(text))
            _remember(self._tokenized, key, tokens)
        else:
            self._tokenized.move_to_end(key)
        return tokens

    def _chunk_tokens(self, chunk: str) -> tuple[int, ...]:
        tokens = self._chunks.get(chunk)
        if tokens is None:
            tokens = tuple(self._tokenizer.encode(chunk))
            _remember(self._chunks, chunk, tokens)
        else:  # least recently used goes first: shared prefixes stay, one-off tails leave
            self._chunks.move_to_end(chunk)
        return tokens

    def default_block_size(self) -> int:
        return self.parameters.tokenProcessorConfig.blockSize

    def speculate(
        self, request: SchedulingRequest, endpoints: Sequence[str], matched: Mapping[str, int],
        now: float,
    ) -> None:  # fmt: skip
        """The request goes to `endpoints`: enter its blocks there for a while."""
        if not self.parameters.speculativeIndexing:
            return
        for name in endpoints:
            block_size = self.index.block_size(name) or self.default_block_size()
            hashes = self.block_hashes(request, block_size)
            if hashes:
                # The matched head is already held there: only the rest is new.
                held = matched.get(name, 0)
                expect = held < len(hashes)
                self.index.speculate(name, hashes[held:], now, expect_events=expect)


def _remember(cache: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    cache[key] = value
    while len(cache) > _TOKENIZED_KEPT:
        cache.popitem(last=False)


def _zmq_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
