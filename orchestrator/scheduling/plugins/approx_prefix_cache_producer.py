"""`approx-prefix-cache-producer`: sizes the approximate prefix index (llm-d's parameters).

With `autoTune` (default), each endpoint's entries are bounded by its KV capacity as its
metrics report it (num_gpu_blocks x block_size tokens); otherwise by `lruCapacityPerServer`.
"""

from __future__ import annotations

from pydantic import Field

from tandem.orchestrator.scheduling.prefix_index import (
    DEFAULT_BLOCK_SIZE_TOKENS,
    DEFAULT_CHARS_PER_TOKEN,
    DEFAULT_LRU_CAPACITY_PER_SERVER,
    DEFAULT_MAX_PREFIX_TOKENS,
    PrefixIndex,
)
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters


class ApproxPrefixParameters(PluginParameters):
    autoTune: bool = True
    blockSizeTokens: int = Field(DEFAULT_BLOCK_SIZE_TOKENS, ge=1)
    maxPrefixTokensToMatch: int = Field(DEFAULT_MAX_PREFIX_TOKENS, ge=1)
    lruCapacityPerServer: int = Field(DEFAULT_LRU_CAPACITY_PER_SERVER, ge=1)
    charsPerToken: float = Field(DEFAULT_CHARS_PER_TOKEN, gt=0)


class ApproxPrefixCacheProducer(Plugin):
    type_name = "approx-prefix-cache-producer"
    Parameters = ApproxPrefixParameters
    parameters: ApproxPrefixParameters

    def build_index(self, seed: str) -> PrefixIndex:
        p = self.parameters
        return PrefixIndex(
            block_size_tokens=max(p.blockSizeTokens, DEFAULT_BLOCK_SIZE_TOKENS),
            max_prefix_tokens=p.maxPrefixTokensToMatch,
            lru_capacity_per_server=p.lruCapacityPerServer,
            chars_per_token=p.charsPerToken,
            seed=seed,
        )

    @property
    def auto_tune(self) -> bool:
        return self.parameters.autoTune
