"""The access token (issue 24, item 9): from `--token-file PATH` or `$DUPLEX_TOKEN` as well as `--token`; a fleet's
workers get it by environment, never on their command line (`ps` shows every user a process's argv); no log prints it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from duplex.server.fleet import Fleet
from duplex.server.options import TOKEN_ENV, OptionsError, ServeOptions, access_token, parse_serve_options
from duplex.server.process import REPO

SECRET = "tok-9f3b2c-not-in-argv"


def test_the_token_comes_from_the_flag_the_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    assert access_token(parse_serve_options(["--token-file", str(path)]), {}) == SECRET
    assert access_token(ServeOptions(), {TOKEN_ENV: SECRET}) == SECRET
    assert access_token(ServeOptions(token="flag"), {TOKEN_ENV: SECRET}) == "flag"   # an explicit flag wins
    assert access_token(ServeOptions(), {}) is None
    with pytest.raises(OptionsError, match="not both"):
        access_token(ServeOptions(token="a", token_file=str(path)), {})
    with pytest.raises(OptionsError, match="cannot read"):
        access_token(ServeOptions(token_file=str(tmp_path / "missing")), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(OptionsError, match="empty"):
        access_token(ServeOptions(token_file=str(tmp_path / "empty")), {})


def test_the_token_flags_help_says_what_it_exposes() -> None:
    from dataclasses import fields

    help_text = next(f for f in fields(ServeOptions) if f.name == "token").metadata["help"]
    assert "ps" in help_text and "--token-file" in help_text and TOKEN_ENV in help_text


@pytest.mark.parametrize("how", ["flag", "file", "env"])
def test_a_workers_command_line_holds_no_token_its_environment_does(tmp_path: Path, monkeypatch, how: str) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    argv = ["--workers", "2", "--slots", "2"]
    if how == "flag":
        argv += ["--token", SECRET]
    elif how == "file":
        (tmp_path / "token").write_text(SECRET)
        argv += ["--token-file", str(tmp_path / "token")]
    else:
        monkeypatch.setenv(TOKEN_ENV, SECRET)
    fleet = Fleet(parse_serve_options(argv))
    for worker in fleet.workers:
        line = worker.argv()
        assert not any(SECRET in a for a in line), line
        assert "--token" not in line and "--token-file" not in line
        assert worker.env[TOKEN_ENV] == SECRET


async def test_a_fleet_worker_requires_the_token_it_got_by_environment_and_no_log_prints_it(tmp_path: Path) -> None:
    """A real supervisor and worker: the token from a file, the worker's /proc cmdline without it, clients without
    it refused, with it served, and not one line of either process's log (debug level) holding it."""
    (tmp_path / "token").write_text(SECRET + "\n")
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    fleet = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duplex", "serve", "--workers", "1", "--slots", "1", "--no-cascade", "--port", "0",
        "--opus-workers", "0", "--quiet-progress", "--static", "none", "--log-level", "debug",
        "--token-file", str(tmp_path / "token"),
        cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert fleet.stdout is not None
    lines: list[str] = []
    try:
        async def until_ready() -> str:
            assert fleet.stdout is not None
            while line := (await fleet.stdout.readline()).decode(errors="replace"):
                lines.append(line)
                if line.startswith("DUPLEX_READY "):
                    return line.split()[1]
            raise AssertionError("the fleet exited:\n" + "".join(lines))
        url = await asyncio.wait_for(until_ready(), 120)
        pid = int(next(t for t in lines if t.startswith("DUPLEX_WORKER ")).split()[4])
        with open(f"/proc/{pid}/cmdline", "rb") as f:   # noqa: ASYNC230 (a tiny file in /proc)
            cmdline = f.read().decode()
        assert "duplex" in cmdline and SECRET not in cmdline
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/chat") as response:
                assert response.status == 401
            async with http.get(f"{url}/api/chat", headers={"Authorization": f"Bearer {SECRET}"}) as response:
                assert response.status != 401   # past the token: a plain GET is not an upgrade
        fleet.terminate()
        rest = await asyncio.wait_for(fleet.stdout.read(), 60)
        lines.append(rest.decode(errors="replace"))
        assert await fleet.wait() == 0
        assert SECRET not in "".join(lines)
    finally:
        if fleet.returncode is None:
            fleet.kill()
            await fleet.wait()
