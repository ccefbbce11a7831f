"""``docs/configuration.md``, generated from the ``Settings`` model: one row per setting
with its variable, default, meaning and the issue that introduced it.

``make docs`` (``python -m server.settings_doc``) writes the file;
``tests/test_settings_doc.py`` fails while it is stale.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from server.settings import ROOT, Settings

DOC = ROOT / "docs" / "configuration.md"
#: What the table shows for a setting with no default.
NONE = "\N{EN DASH}"

HEADER = """\
# Configuration

<!-- Generated from server/settings.py by `make docs`; do not edit by hand. -->

Every setting is an environment variable (or a line in a `.env` file in the folder the
server starts from), named as below. `python -m server --help` shows the CLI flags that
override the most common ones (`--host`, `--port`, `--provider`, `--log-level`,
`--log-format`). A value out of range stops the server at startup with a message naming
the setting. "Issue" names the issue that introduced the setting.

| variable | default | meaning | issue |
|---|---|---|---|
"""


def _default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "shown" in extra:
        shown = str(extra["shown"])
        return f"`{shown}`" if shown and "`" not in shown and " " not in shown else shown or NONE
    value: Any = field.default
    if value is PydanticUndefined or value is None:
        return NONE
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _issue(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    return f"#{extra['issue']}" if isinstance(extra, dict) and "issue" in extra else ""


def render() -> str:
    """The whole document, in the order the fields are declared."""
    rows = []
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {_default(field)} | {meaning} | {_issue(field)} |")
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the document (``--check``: exit 1 when the file differs instead)."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    path = Path(DOC)
    if "--check" in args:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            sys.exit(f"{path} is stale: run `make docs`")
        return
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
