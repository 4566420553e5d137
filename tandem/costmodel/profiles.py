"""Named engine profiles (H100, and gpt-oss-120b on H200): model shape, KV capacity and
step-time coefficients.

Every figure comes from `h100-calibration.md` (tandem's calibration reference), which derives
them from the model configs on Hugging Face, the H100 datasheet and published measurements:

* KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x 2 bytes (BF16).
* KV capacity = 0.90 x 79.2 GiB x TP - weights - ~1.5 GiB per GPU of activations, cross-checked
  against llm-d's measured 8.52 GiB of KV for Qwen3-32B on one H100 at 0.90.
* Step time (see `step.py`): t_ovh, t_w (weights / ~2.7 TB/s effective HBM), c_lin
  (2 x params / (TP x 989 TFLOPS x MFU)), c_attn, c_kv (KV bytes per token per GPU / 2.7 TB/s).
  Qwen3-32B's c_lin is pinned to the measured 15,928 prefill tok/s at 8k prompts
  (llm-d calibration matrix, vLLM v0.23.0).
* KV transfer: one 400G InfiniBand rail per rank, ~49.5 GB/s with UCX (nixlbench), of which
  llm-d saw ~44 % end to end; 2 ms fixed cost per transfer (UCX posting, ~283 us per
  descriptor batch, plus the side-channel round trip).
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.errors import UnknownProfileError

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class StepCoefficients:
    """Coefficients of `step = t_ovh + max(t_w, c_lin*(P+D)) + c_attn*A + c_kv*K` (seconds)."""

    t_ovh: float
    t_w: float
    c_lin: float
    c_attn: float
    c_kv: float


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """One vLLM pod of a given model on H100s: what it holds and how fast it steps."""

    name: str
    model: str
    tensor_parallel_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_model_len: int
    kv_capacity_tokens: int
    step: StepCoefficients
    kv_transfer_bandwidth_bytes_per_s: float
    kv_transfer_latency_s: float
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token occupies across all ranks (K and V, every layer)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def num_gpu_blocks(self, block_size: int) -> int:
        """KV capacity in blocks of `block_size` tokens."""
        return self.kv_capacity_tokens // block_size

    def kv_transfer_seconds(self, num_tokens: int) -> float:
        """Model time to move `num_tokens` of KV between pods (bytes / bandwidth + latency)."""
        if num_tokens <= 0:
            return 0.0
        size = num_tokens * self.kv_bytes_per_token
        return self.kv_transfer_latency_s + size / self.kv_transfer_bandwidth_bytes_per_s


# ~44 % of a 400G rail (49.5 GB/s measured by nixlbench) per rank, as llm-d saw end to end.
_RAIL_BYTES_PER_S = 0.44 * 49.5e9

PROFILES: dict[str, EngineProfile] = {
    profile.name: profile
    for profile in (
        EngineProfile(
            name="llama-3.1-8b-h100-tp1",
            model="meta-llama/Llama-3.1-8B-Instruct",
            tensor_parallel_size=1,
            num_layers=32,
            num_kv_heads=8,
            head_dim=128,
            max_model_len=131072,
            kv_capacity_tokens=450_000,
            step=StepCoefficients(
                t_ovh=0.5e-3, t_w=6.0e-3, c_lin=24e-6, c_attn=0.93e-9, c_kv=0.049e-6
            ),
            kv_transfer_bandwidth_bytes_per_s=_RAIL_BYTES_PER_S,
            kv_transfer_latency_s=2e-3,
        ),
        EngineProfile(
            name="qwen3-32b-h100-tp2",
            model="Qwen/Qwen3-32B",
            tensor_parallel_size=2,
            num_layers=64,
            num_kv_heads=8,
            head_dim=128,
            max_model_len=40960,
            # ~355k tokens at gpu_memory_utilization 0.95, the published run's setting.
            kv_capacity_tokens=355_000,
            step=StepCoefficients(
                t_ovh=2.0e-3, t_w=12.1e-3, c_lin=55e-6, c_attn=1.86e-9, c_kv=0.049e-6
            ),
            kv_transfer_bandwidth_bytes_per_s=2 * _RAIL_BYTES_PER_S,
            kv_transfer_latency_s=2e-3,
        ),
        EngineProfile(
            name="llama-3.1-70b-h100-tp4",
            model="meta-llama/Llama-3.1-70B-Instruct",
            tensor_parallel_size=4,
            num_layers=80,
            num_kv_heads=8,
            head_dim=128,
            max_model_len=131072,
            kv_capacity_tokens=470_000,
            step=StepCoefficients(
                t_ovh=2.5e-3, t_w=13.1e-3, c_lin=70e-6, c_attn=1.33e-9, c_kv=0.030e-6
            ),
            kv_transfer_bandwidth_bytes_per_s=4 * _RAIL_BYTES_PER_S,
            kv_transfer_latency_s=2e-3,
        ),
        # gpt-oss-120b (openai/gpt-oss-120b config.json: 36 layers alternating full and
        # 128-token sliding-window attention, 64 query and 8 KV heads of 64, 128 experts of
        # which 4 per token; 116.8B parameters, 5.1B active; ~65 GB of MXFP4 expert weights
        # and BF16 attention) on H200 SXM (141 GB HBM3e at 4.8 TB/s, taken at ~80 %: 3.87
        # TB/s; 989 dense BF16 TFLOPS, as H100). KV per token counts the 18 full-attention
        # layers; a sliding layer holds at most 128 tokens of a sequence and is left out.
        # c_lin is pinned to the 33,821 prefill tok/s llm-d calibrated for these TP1 pods
        # (llm-d/llm-d: guides/pd-disaggregation, `peakPrefillThroughput`), less attention;
        # c_attn = 4 x 18 x 64 x 64 FLOPs per token pair at 50 % MFU; c_kv = KV bytes per
        # token per GPU / 3.87 TB/s. t_w (14 ms) is fitted to the published aggregated arm
        # (16 TP1 pods at 45 QPS: mean ITL 25 ms; tandem plan pd-guide-16gpu gives 25.7 ms
        # with 12 ms at 22.6); a decode step at that batch (~17) reads part of the experts,
        # less than the whole 16.9 ms of weights.
        EngineProfile(
            name="gpt-oss-120b-h200-tp1",
            model="openai/gpt-oss-120b",
            tensor_parallel_size=1,
            num_layers=18,
            num_kv_heads=8,
            head_dim=64,
            max_model_len=131072,
            # 0.90 x 141 GB - 65 GB of weights - ~1.6 GB of activations, / 36,864 B.
            kv_capacity_tokens=1_600_000,
            step=StepCoefficients(
                t_ovh=1.0e-3, t_w=14.0e-3, c_lin=27.9e-6, c_attn=0.6e-9, c_kv=9.5e-9
            ),
            kv_transfer_bandwidth_bytes_per_s=_RAIL_BYTES_PER_S,
            kv_transfer_latency_s=2e-3,
        ),
        # The same model over 4 H200s (llm-d's P/D guide's decode pods): weights, dense and
        # attention compute and KV reads split four ways, c_lin at the lower efficiency of
        # wider TP (the H100 table's 8B TP1 vs 70B TP4 MFU, 0.57 vs 0.49), and the TP1
        # overhead plus the all-reduces of 36 layers at the H100 table's 70B TP4 cost per
        # layer (~25 us); t_w is derived from bandwidth (~11.6 of the 16.3 GB per GPU read
        # at a decode batch of ~55, / 3.87 TB/s), not from the TP1 fit. Not fitted to any
        # published P/D figure:
        # `tandem plan pd-guide-16gpu` predicts the P/D arm with it.
        EngineProfile(
            name="gpt-oss-120b-h200-tp4",
            model="openai/gpt-oss-120b",
            tensor_parallel_size=4,
            num_layers=18,
            num_kv_heads=8,
            head_dim=64,
            max_model_len=131072,
            # 4 x 0.90 x 141 GB - 65 GB - 4 x ~1.6 GB, / 36,864 B.
            kv_capacity_tokens=11_800_000,
            step=StepCoefficients(
                t_ovh=1.9e-3, t_w=3.0e-3, c_lin=8.1e-6, c_attn=0.15e-9, c_kv=2.4e-9
            ),
            kv_transfer_bandwidth_bytes_per_s=4 * _RAIL_BYTES_PER_S,
            kv_transfer_latency_s=2e-3,
        ),
    )
}


def get_profile(name: str) -> EngineProfile:
    """Look up a profile by name, with the list of known names in the error."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise UnknownProfileError(f"unknown engine profile {name!r}; known: {known}") from None
