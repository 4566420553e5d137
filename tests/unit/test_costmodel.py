"""Step-time model and engine profiles."""

from __future__ import annotations

from itertools import pairwise

import pytest

from tandem.costmodel.profiles import PROFILES, get_profile
from tandem.costmodel.step import PrefillChunk, StepShape, step_seconds
from tandem.errors import UnknownProfileError, UsageError

LLAMA_8B = get_profile("llama-3.1-8b-h100-tp1")
QWEN_32B = get_profile("qwen3-32b-h100-tp2")
PROFILE_NAMES = sorted(PROFILES)


def _prefill(num_tokens: int, context_tokens: int = 0) -> StepShape:
    return StepShape(prefill_chunks=(PrefillChunk(num_tokens, context_tokens),))


def _decode(batch_size: int, context_len: int) -> StepShape:
    return StepShape(decode_context_lens=(context_len,) * batch_size)


# Each row: a family of shapes ordered by growing work; step time must never go down.
MONOTONE_SERIES: list[tuple[str, list[StepShape]]] = [
    ("prefill-tokens", [_prefill(n) for n in (1, 16, 128, 512, 2048, 8192)]),
    ("prefill-context", [_prefill(512, ctx) for ctx in (0, 1024, 8192, 32768)]),
    ("decode-batch", [_decode(b, 1024) for b in (1, 8, 64, 256, 512, 1024)]),
    ("decode-context", [_decode(32, ctx) for ctx in (16, 1024, 8192, 32768, 131072)]),
    (
        "mixed-prefill-tokens",
        [
            StepShape(prefill_chunks=(PrefillChunk(n, 0),), decode_context_lens=(2048,) * 16)
            for n in (0, 64, 1024, 4096)
        ],
    ),
]


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
@pytest.mark.parametrize(
    "shapes", [shapes for _, shapes in MONOTONE_SERIES], ids=[n for n, _ in MONOTONE_SERIES]
)
def test_step_time_is_monotone_in_work(profile_name: str, shapes: list[StepShape]) -> None:
    coefficients = get_profile(profile_name).step

    times = [step_seconds(coefficients, shape) for shape in shapes]

    assert times == sorted(times)
    # And the series actually moves: more work eventually costs more time.
    assert times[-1] > times[0]


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_empty_step_takes_no_time(profile_name: str) -> None:
    assert step_seconds(get_profile(profile_name).step, StepShape()) == 0.0


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
@pytest.mark.parametrize("shape", [_decode(1, 1), _prefill(1)], ids=["decode-1", "prefill-1"])
def test_tiny_step_is_bounded_by_streaming_the_weights(profile_name: str, shape: StepShape) -> None:
    c = get_profile(profile_name).step

    seconds = step_seconds(c, shape)

    # The linear term is floored at t_w; attention and KV reads of one token are negligible.
    assert seconds == pytest.approx(c.t_ovh + c.t_w, rel=1e-4)
    assert seconds >= c.t_ovh + c.t_w


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        # step = t_ovh + max(t_w, c_lin*(P+D)) + c_attn*A + c_kv*K with t_ovh=0.5ms,
        # t_w=6ms, c_lin=24us, c_attn=0.93ns, c_kv=0.049us (Llama-8B).
        (_prefill(1000), 0.5e-3 + 24e-3 + 0.93e-9 * 1000 * 500),
        (_prefill(100, 900), 0.5e-3 + 6e-3 + 0.93e-9 * 100 * 950),
        (_decode(10, 1000), 0.5e-3 + 6e-3 + 0.049e-6 * 10_000),
    ],
)
def test_step_time_formula(shape: StepShape, expected: float) -> None:
    assert step_seconds(LLAMA_8B.step, shape) == pytest.approx(expected)


def test_step_shape_counts() -> None:
    shape = StepShape(
        prefill_chunks=(PrefillChunk(10, 0), PrefillChunk(5, 20)), decode_context_lens=(1, 2, 3)
    )

    assert (shape.num_prefill_tokens, shape.num_decode_seqs, shape.is_empty) == (15, 3, False)


@pytest.mark.parametrize(
    ("profile_name", "expected_bytes"),
    [
        ("llama-3.1-8b-h100-tp1", 131072),
        ("qwen3-32b-h100-tp2", 262144),
        ("llama-3.1-70b-h100-tp4", 327680),
    ],
)
def test_kv_bytes_per_token(profile_name: str, expected_bytes: int) -> None:
    profile = get_profile(profile_name)

    assert profile.kv_bytes_per_token == expected_bytes
    assert expected_bytes == 2 * profile.num_layers * profile.num_kv_heads * profile.head_dim * 2


@pytest.mark.parametrize(("block_size", "expected"), [(16, 28125), (64, 7031)])
def test_num_gpu_blocks_from_capacity(block_size: int, expected: int) -> None:
    assert LLAMA_8B.num_gpu_blocks(block_size) == expected


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProfileError) as raised:
        get_profile("gpt-5-on-a-toaster")

    message = str(raised.value)
    assert "gpt-5-on-a-toaster" in message
    for name in PROFILE_NAMES:
        assert name in message
    assert isinstance(raised.value, UsageError)  # the command line says it and exits 2


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_kv_transfer_seconds_grows_with_tokens(profile_name: str) -> None:
    profile = get_profile(profile_name)
    token_counts = [1, 16, 1024, 8192, 65536]

    times = [profile.kv_transfer_seconds(n) for n in token_counts]

    assert all(earlier < later for earlier, later in pairwise(times))
    assert profile.kv_transfer_seconds(0) == 0.0
    assert times[0] > profile.kv_transfer_latency_s


def test_kv_transfer_seconds_is_latency_plus_bytes_over_bandwidth() -> None:
    expected = 2e-3 + 1000 * 262144 / (2 * 0.44 * 49.5e9)

    assert QWEN_32B.kv_transfer_seconds(1000) == pytest.approx(expected)
