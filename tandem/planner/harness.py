"""The load harnesses `tandem plan` can reproduce (kept light: the command line reads it)."""

from __future__ import annotations

HARNESSES = {
    "tandem": (
        "as `tandem bench` offers it: stages follow each other whatever is still in flight, "
        "every request with a question of its own"
    ),
    "inference-perf": (
        "as inference-perf offers it (the harness of the published llm-d figures): each stage "
        "starts when every request of the previous one has ended, and requests cycle through "
        "the workload's fixed prompts (num_groups x prompts_per_group), so whole prompts repeat"
    ),
}
"""Load harnesses a plan can reproduce, and what each means."""
