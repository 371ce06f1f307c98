"""`duplex serve`'s typed options: parsed once, written back as flags for the fleet's workers, round trip exact."""

from __future__ import annotations

import dataclasses
import typing as tp

import pytest

from duplex.cli import build_parser
from duplex.server.fleet import worker_argv
from duplex.server.options import ServeOptions, options_from_namespace, parse_serve_options


def changed_value(f: dataclasses.Field) -> tp.Any:
    """A value of the field's type other than its default (a valid choice where there are choices)."""
    choices = f.metadata["choices"]
    if choices is not None:
        listed = choices() if callable(choices) else choices
        return next(c for c in listed if c != f.default)
    return {"bool": True, "int": 7 if f.default != 7 else 8, "float": 12.5, "float | None": 0.25,
            "str": "/some where/with space", "str | None": "a b"}[str(f.type)]


def test_defaults_are_no_flags_and_parse_back() -> None:
    assert ServeOptions().to_argv() == []
    assert parse_serve_options([]) == ServeOptions()


def test_every_option_changed_round_trips_through_argv() -> None:
    changed = ServeOptions(**{f.name: changed_value(f) for f in dataclasses.fields(ServeOptions)})
    argv = changed.to_argv()
    assert len([a for a in argv if a.startswith("--")]) == len(dataclasses.fields(ServeOptions))   # each one written
    assert parse_serve_options(argv) == changed


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(ServeOptions)])
def test_each_option_alone_round_trips(name: str) -> None:
    f = next(f for f in dataclasses.fields(ServeOptions) if f.name == name)
    one = dataclasses.replace(ServeOptions(), **{name: changed_value(f)})
    assert parse_serve_options(one.to_argv()) == one


def test_the_duplex_serve_command_parses_into_the_same_options() -> None:
    """Every flag of `duplex serve` is a field (nothing reaches the server outside the options)."""
    args = build_parser().parse_args(["serve", "--slots", "3", "--no-cascade", "--record-max-gb", "0.5",
                                      "--record", "/tmp/r"])
    extra = set(vars(args)) - {f.name for f in dataclasses.fields(ServeOptions)}
    assert extra == {"command", "func"}
    options = options_from_namespace(args)
    assert (options.slots, options.no_cascade, options.record_max_gb, options.record) == (3, True, 0.5, "/tmp/r")
    assert options == parse_serve_options(["--slots", "3", "--no-cascade", "--record-max-gb", "0.5", "--record", "/tmp/r"])


def test_values_that_look_like_flags_round_trip() -> None:
    odd = ServeOptions(token="-x", speech_threshold_dbfs=-60.0, static="--static", llm_model="")
    assert parse_serve_options(odd.to_argv()) == odd


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServeOptions().slots = 3   # type: ignore[misc]


def test_a_worker_gets_every_flag_but_the_fleets_own_and_its_own_address() -> None:
    fleet = parse_serve_options(["--gpus", "0,1", "--haproxy", "--lb-queue-timeout-s", "5", "--slots", "16",
                                 "--token", "s3cret", "--host", "0.0.0.0", "--port", "9000", "--record", "/rec"])
    argv = worker_argv(fleet, host="127.0.0.1", port=9001, threads=3, max_connections=16)
    assert argv[1:4] == ["-m", "duplex", "serve"]
    worker = parse_serve_options(argv[4:])
    assert not worker.fleet and not worker.haproxy and worker.lb_queue_timeout_s == ServeOptions.lb_queue_timeout_s
    assert (worker.host, worker.port, worker.threads, worker.max_connections) == ("127.0.0.1", 9001, 3, 16)
    assert worker == dataclasses.replace(fleet, gpus=None, haproxy=False, lb_queue_timeout_s=2.0, host="127.0.0.1",
                                         port=9001, threads=3, max_connections=16, token=None)
    assert not any("s3cret" in a for a in argv)   # the token goes by environment (test_token.py), never argv


def test_a_bad_value_is_refused_with_the_flags_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_serve_options(["--slots", "many"])
    assert "--slots: invalid int value: 'many'" in capsys.readouterr().err
