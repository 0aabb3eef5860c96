"""What a peer speaks, from its HELLO's agent (proto/features.py)."""

from __future__ import annotations

import pytest

from p2pfast import __version__
from p2pfast.proto import features


@pytest.mark.parametrize(
    ("agent", "version"),
    [
        ("p2pfast/0.2.0", (0, 2)),
        ("p2pfast/0.10.3", (0, 10)),
        ("p2pfast/1.0", (1, 0)),
        ("p2pfast/0.2.0.dev1", (0, 2)),
        ("p2pfast/0.2.0+local", (0, 2)),
        ("p2pfast", None),
        ("other/0.9.0", None),
        ("", None),
        ("p2pfast/x.y", None),
    ],
)
def test_version_of_an_agent(agent: str, version: tuple[int, int] | None) -> None:
    assert features.version_of(agent) == version


def test_a_feature_goes_only_to_the_builds_that_have_it() -> None:
    assert features.speaks("p2pfast/0.2.0", "view") and features.speaks("p2pfast/1.0.0", "view")
    assert not features.speaks("p2pfast/0.1.0", "view") and not features.speaks("someone-else/9", "view")
    assert features.speaks("p2pfast/0.2.0", "keymeta") and not features.speaks("p2pfast/0.1.9", "keymeta")
    assert all(features.speaks(f"p2pfast/{__version__}", f) for f in features.SINCE)  # this build has all
