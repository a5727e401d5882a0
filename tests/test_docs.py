"""The docs a user reads stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from detector import DetectorConfig, RejectReason
from detector.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_and_reject_reason_is_documented():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for name in DetectorConfig.model_fields:
        assert f"`{name}`" in doc and f"HIDDENSTATE_{name.upper()}" in doc, name
    for reason in RejectReason:
        assert f"`{reason.label}`" in doc, reason


def test_documented_flags_exist():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    replay_help = build_parser()._subparsers._group_actions[0].choices["replay"].format_help()
    for flag in set(re.findall(r"`(--[a-z-]+)`", doc)):
        assert flag in replay_help, flag


def test_readme_has_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- main-command -->") == 1 and readme.count("<!-- test-command -->") == 1
    main = readme.split("<!-- main-command -->")[1].split("```")[1]
    assert "hiddenstate demo" in main
    test = readme.split("<!-- test-command -->")[1].split("```")[1]
    assert "pytest" in test


def test_every_service_setting_is_documented_and_security_md_names_only_real_ones():
    from consumers.config import ServiceConfig

    tables = (ROOT / "docs" / "service.md").read_text() + (ROOT / "docs" / "metrics.md").read_text()
    for name in set(ServiceConfig.model_fields) - {"detector"}:
        assert f"| `{name}` | `HIDDENSTATE_{name.upper()}`" in tables, name
    security = (ROOT / "docs" / "security.md").read_text()
    limits = security.split("## Hostile input")[1].split("## Model loading")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in limits.splitlines() if line[:2] == "| "]
    settings = [cols[1].strip("`") for cols in rows if len(cols) == 4 and cols[1].startswith("`")]
    assert "max_message_bytes" in settings and "sensor_id_pattern" in settings
    for name in settings:  # the "setting" column of the limits table
        field = name.removeprefix("detector.")
        assert field in ServiceConfig.model_fields or field in DetectorConfig.model_fields, name
    assert "(docs/security.md)" in (ROOT / "README.md").read_text()
    assert "(security.md)" in (ROOT / "docs" / "configuration.md").read_text()
