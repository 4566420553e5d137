"""What `tandem up` prints: its table of components."""

from __future__ import annotations

import re

from tandem.cli.console import table


def test_columns_are_as_wide_as_their_widest_cell() -> None:
    rendered = table([("decode-0", "decode", "sidecar"), ("pod", "-", "x")], ("name", "role", "w"))

    assert rendered.splitlines() == [
        "┌──────────┬────────┬─────────┐",
        "│ name     │ role   │ w       │",
        "├──────────┼────────┼─────────┤",
        "│ decode-0 │ decode │ sidecar │",
        "│ pod      │ -      │ x       │",
        "└──────────┴────────┴─────────┘",
    ]


def test_a_script_reads_each_components_address_from_its_row() -> None:
    """Scripts that start `tandem up` find a pod's address by its row (`│ prefill-0 `),
    as the side-by-side peer benchmark does for the pods' own vLLM ports."""
    rows = [
        ("prefill-0", "prefill", "simulated vLLM", "127.0.0.1:19100"),
        ("decode-0-vllm", "decode", "simulated vLLM", "127.0.0.1:19104"),
        ("decode-0", "decode", "sidecar", "127.0.0.1:19105"),
    ]
    lines = table(rows).splitlines()

    def addresses(row: str) -> list[str]:
        return [
            address
            for line in lines
            if re.search(row, line)
            for address in re.findall(r"127\.0\.0\.1:[0-9]+", line)
        ]

    assert addresses(r"│ prefill-[0-9]+ ") == ["127.0.0.1:19100"]
    assert addresses(r"│ decode-[0-9]+-vllm ") == ["127.0.0.1:19104"]
    assert addresses(r"│ decode-[0-9]+ ") == ["127.0.0.1:19105"]
