"""The config schema (`duplex.config`) and what derives from it: validation, engine key sets,
sampling defaults, the client's flags, and docs/protocol.md's table (which must not drift)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest

from duplex.client import cli as client_cli
from duplex.config import (CASCADE_CONFIG_KEYS, CONFIG_SCHEMA, DUPLEX_CONFIG_KEYS, ConfigError, markdown_table,
                           validate_config)
from duplex.models.sampling import SamplingSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
TABLE = re.compile(r"<!-- config-table:[^>]*-->\n(.*?)<!-- /config-table -->", re.S)


def test_docs_table_is_the_generated_one() -> None:
    found = TABLE.search(DOC.read_text())
    assert found, "docs/protocol.md lost its config-table markers"
    assert found.group(1) == markdown_table(), (
        "docs/protocol.md's config table differs from duplex.config.markdown_table(); paste the generated one")


def test_engine_key_sets_come_from_the_schema() -> None:
    # system_prompt and voice: a persona duplex model's (PersonaPlex); others answer them `unsupported`
    # cfg_coef and condition: a guided duplex model's (Hibiki); others, and the cascade, answer them `unsupported`
    assert DUPLEX_CONFIG_KEYS == {"temperature", "text_temperature", "top_k", "text_top_k", "seed", "transcribe_user",
                                  "system_prompt", "voice", "record", "cfg_coef", "condition"}
    assert CASCADE_CONFIG_KEYS == set(CONFIG_SCHEMA) - {"cfg_coef", "condition"}


def test_sampling_defaults_are_the_schemas() -> None:
    settings = SamplingSettings()
    for name in ("temperature", "text_temperature", "top_k", "text_top_k", "seed"):
        assert getattr(settings, name) == CONFIG_SCHEMA[name].default
    assert settings.updated({"seed": 3, "voice": "v"}).seed == 3


@pytest.mark.parametrize("config", [
    {"bogus": 1}, {"temperature": "hot"}, {"temperature": True}, {"temperature": 5.01}, {"top_k": 0},
    {"text_top_k": 501}, {"seed": -1}, {"seed": 2**63}, {"transcribe_user": 1}, {"voice": 3}, [],
    {"temperature": math.nan}, {"text_temperature": math.inf}, {"temperature": -math.inf},
])
def test_bad_configs_are_refused_naming_the_key(config) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    if isinstance(config, dict):
        assert next(iter(config)) in str(error.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_no_numeric_key_fits_a_non_finite_number(value) -> None:
    """`fit` (the lenient path: /api/chat's query) brings numbers into range, but NaN and infinity it refuses."""
    numeric = [key for key in CONFIG_SCHEMA.values() if key.kind in (int, float)]
    assert {key.name for key in numeric} == {"temperature", "text_temperature", "top_k", "text_top_k", "seed", "tool_timeout_s",
                                              "cfg_coef"}
    for key in numeric:
        with pytest.raises(ConfigError, match=f"config.{key.name}"):
            key.fit(value)


def test_good_config_passes_unchanged() -> None:
    config = {"temperature": 0, "text_temperature": 5.0, "top_k": 1, "text_top_k": 500, "seed": 2**63 - 1,
              "system_prompt": "x", "voice": "v", "transcribe_user": False}
    assert validate_config(config) == config
    assert validate_config(None) == {}


def test_every_key_has_a_client_flag() -> None:
    parser = argparse.ArgumentParser(prog="duplex")
    client_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["client"])
    for name in CONFIG_SCHEMA:
        assert hasattr(args, name) and getattr(args, name) is None
