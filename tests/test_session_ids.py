"""Session ids: which strings the routes and namespaces take for one (the same as
``uuid.UUID`` would, through a cheaper check of the canonical form)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from server.core.models import parse_session_id


def _uuid_says(value: str) -> bool:
    """What ``parse_session_id`` answered before its canonical-form check: ``uuid.UUID``."""
    if len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def test_session_ids_are_taken_as_uuid_takes_them() -> None:
    canonical = str(uuid.uuid4())
    hexes = canonical.replace("-", "")
    for value in [
        canonical,
        canonical.upper(),
        "{" + hexes + "}" + "--",
        "urn:" + hexes,
        "----" + hexes,
        hexes[:8] + "_" + hexes[8:] + "---",
        " " + hexes + "---",
        canonical[:-1] + "g",
        canonical[:-1],
        canonical + "0",
        canonical.replace("-", "_"),
        "",
        "0" * 36,
        "\u0661" * 8 + canonical[8:],
    ]:
        assert (parse_session_id(value) == value) == _uuid_says(value), value
    assert parse_session_id(None) is None
    assert parse_session_id(uuid.UUID(canonical)) is None


@given(st.text(alphabet="0123456789abcdefABCDEFg-_{}:urnid \u0661", min_size=30, max_size=40))
def test_any_string_is_taken_as_uuid_takes_it(value: str) -> None:
    assert (parse_session_id(value) == value) == _uuid_says(value)
