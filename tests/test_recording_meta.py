"""What a recording's meta.json says about the server holds no secret (issue 24 item 11): `--llm-url` may carry
credentials (`https://user:key@host/v1?api_key=...`); the spec written is the endpoint without them."""

from __future__ import annotations

import json

from duplex.server.loading import model_specs
from duplex.server.options import ServeOptions


def test_the_llm_urls_user_info_and_query_are_not_written() -> None:
    options = ServeOptions(llm_url="https://alice:sk-SECRET1@llm.example.com:8443/v1?api_key=SECRET2&x=1#SECRET3",
                           llm_model="qwen")
    specs = model_specs(options)
    assert specs["llm"] == "https://llm.example.com:8443/v1"
    assert specs["llm_model"] == "qwen"
    assert "SECRET" not in json.dumps(specs)


def test_a_plain_url_and_a_model_spec_are_kept_as_given() -> None:
    assert model_specs(ServeOptions(llm_url="http://127.0.0.1:8000/v1"))["llm"] == "http://127.0.0.1:8000/v1"
    assert model_specs(ServeOptions(llm="some/repo"))["llm"] == "some/repo"
    assert model_specs(ServeOptions(llm_url="http://[::1]:8000/v1?k=1"))["llm"] == "http://[::1]:8000/v1"
