"""Step-time model of one vLLM engine step on H100s.

    step = t_ovh + max(t_w, c_lin * (P + D)) + c_attn * A + c_kv * K

P: prefill tokens in the step; D: decoding sequences (one token each); A: sum over prefill
chunks of C * (ctx_before + C / 2), the attention work of a chunk of C tokens on top of
ctx_before tokens already in the cache; K: sum of the context lengths the decoding sequences
read. The linear term is bounded below by the time to stream the weights once (t_w): a small
batch is memory-bound. Source: tandem's H100 calibration reference, section 3, validated
there against llm-d's rate-60 stage (~63 ms predicted vs 67.7 ms measured ITL).
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.costmodel.profiles import StepCoefficients


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """A chunk of `num_tokens` prompt tokens computed on top of `context_tokens` cached ones."""

    num_tokens: int
    context_tokens: int


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one engine step computes: prefill chunks and decoding sequences' contexts."""

    prefill_chunks: tuple[PrefillChunk, ...] = ()
    decode_context_lens: tuple[int, ...] = ()

    @property
    def num_prefill_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.prefill_chunks)

    @property
    def num_decode_seqs(self) -> int:
        return len(self.decode_context_lens)

    @property
    def is_empty(self) -> bool:
        return not self.prefill_chunks and not self.decode_context_lens


def step_seconds(coefficients: StepCoefficients, shape: StepShape) -> float:
    """Model time of one step of the given shape; 0 for an empty step."""
    if shape.is_empty:
        return 0.0
    c = coefficients
    linear_tokens = shape.num_prefill_tokens + shape.num_decode_seqs
    attention = sum(
        chunk.num_tokens * (chunk.context_tokens + chunk.num_tokens / 2)
        for chunk in shape.prefill_chunks
    )
    return _seconds(c, linear_tokens, attention, sum(shape.decode_context_lens))


def decode_step_seconds(coefficients: StepCoefficients, num_seqs: int, context_sum: int) -> float:
    """Model time of a step that only decodes: `num_seqs` sequences reading `context_sum`
    tokens in all (the same value `step_seconds` gives that shape)."""
    if num_seqs == 0:
        return 0.0
    return _seconds(coefficients, num_seqs, 0, context_sum)


def _seconds(c: StepCoefficients, linear_tokens: int, attention: float, kv_read: int) -> float:
    return c.t_ovh + max(c.t_w, c.c_lin * linear_tokens) + c.c_attn * attention + c.c_kv * kv_read
