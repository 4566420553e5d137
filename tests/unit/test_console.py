"""What `tandem up` prints: its table of components."""

from __future__ import annotations

from tandem.cli.console import table


def test_columns_are_as_wide_as_their_widest_cell() -> None:
    rendered = table([("decode-0", "decode", "sidecar"), ("pod", "-", "x")], ("name", "role", "w"))

    assert rendered.splitlines() == [
        "name      role    w",
        "--------  ------  -------",
        "decode-0  decode  sidecar",
        "pod       -       x",
    ]
