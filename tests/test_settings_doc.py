"""docs/configuration.md is generated from the Settings model and kept current."""

from __future__ import annotations

from server.settings import Settings
from server.settings_doc import DOC, render


def test_configuration_doc_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_setting_is_documented_with_its_issue():
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no meaning"
        assert isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("issue"), name
        assert f"| `{name.upper()}` |" in render()
