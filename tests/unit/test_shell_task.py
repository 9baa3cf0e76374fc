"""`invoke shell` / `invoke ps` through invoke's own parser and MockContext, and the
memlock probe's cache: no engine is touched (Engine is replaced where one would be)."""

from __future__ import annotations

import sys

import pytest
from invoke import Collection, Exit, MockContext, Program

import tasks
from mlsyskit.runtime import host, shell
from mlsyskit.runtime.shell import ShellOptions


@pytest.fixture
def captured(monkeypatch):
    """Runs `invoke ARGV` in-process; returns the ShellOptions tasks.shell passed on."""
    seen: list[ShellOptions] = []
    monkeypatch.setattr(tasks.kit_shell, "shell", lambda options, log: seen.append(options))

    def run(*argv: str) -> ShellOptions:
        full = ["invoke", *argv]
        monkeypatch.setattr(sys, "argv", full)
        Program(namespace=Collection.from_module(tasks)).run(full, exit=False)
        return seen[-1]

    return run


def test_topic_and_command_word_for_word(captured):
    options = captured("shell", "distributed", "--gpus", "2", "-e", "A=1", "-e", "B", "-p", "8000", "--", "sh", "-c", "exit 7")
    assert options.topic == "distributed" and options.gpus == "2"
    assert options.env == ("A=1", "B") and options.ports == ("8000",)
    assert options.command == ("sh", "-c", "exit 7")


def test_name_alone_reenters(captured):
    options = captured("shell", "--name", "dev")
    assert options.topic == "" and options.name == "dev" and options.command == ()


def test_topic_before_name_is_still_the_topic(captured):
    options = captured("shell", "distributed", "--name", "dev", "--", "nvidia-smi")
    assert (options.topic, options.name, options.command) == ("distributed", "dev", ("nvidia-smi",))


def test_flags(captured):
    options = captured("shell", "distributed", "--workspace", "/src", "--shm-size", "16g", "--mount", "/data:/data", "--network", "host", "--root")
    assert (options.workspace, options.shm_size, options.mounts, options.network, options.root) == ("/src", "16g", ("/data:/data",), "host", True)


def test_unknown_topic_lists_the_known_ones_before_any_engine_call(monkeypatch):
    monkeypatch.setattr(shell.Engine, "for_running", lambda: pytest.fail("no engine for a bad topic"))
    with pytest.raises(Exit) as err:
        tasks.shell(MockContext(), "no-such-topic")
    assert err.value.code == 2
    assert err.value.message.startswith("error: unknown topic 'no-such-topic'") and "distributed" in err.value.message
    assert "\n" not in err.value.message


def test_ambiguous_gpus_is_refused_before_any_engine_call(monkeypatch):
    monkeypatch.setattr(shell.Engine, "for_running", lambda: pytest.fail("no engine for bad options"))
    with pytest.raises(Exit) as err:
        tasks.shell(MockContext(), "distributed", gpus="0")
    assert err.value.code == 2 and "ambiguous" in err.value.message


class FakeEngine:
    """Stands in for Engine in the cache test: counts the probes."""

    def __init__(self, allowed: bool) -> None:
        self.allowed, self.probes = allowed, 0

    def ulimit_allowed(self, image: str, ulimit: str) -> bool:
        self.probes += 1
        return self.allowed


def test_memlock_is_probed_once_per_daemon_and_warned_once(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path), "DOCKER_HOST": "tcp://a:2375"}
    engine, lines = FakeEngine(allowed=False), []
    assert host.memlock_allowed(engine, "img", environ, lines.append) is False
    assert host.memlock_allowed(engine, "img", environ, lines.append) is False
    assert engine.probes == 1 and len(lines) == 1 and "memlock" in lines[0]
    other = {**environ, "DOCKER_HOST": "tcp://b:2375"}  # another daemon: probed again
    assert host.memlock_allowed(FakeEngine(allowed=True), "img", other, lines.append) is True
    assert len(lines) == 1
    host.forget_memlock(other)
    fresh = FakeEngine(allowed=True)
    host.memlock_allowed(fresh, "img", other, lines.append)
    assert fresh.probes == 1


def test_daemon_key_changes_when_the_socket_is_recreated(tmp_path):
    sock = tmp_path / "docker.sock"
    sock.write_text("")
    environ = {"DOCKER_HOST": f"unix://{sock}"}
    before = host.daemon_key(environ)
    sock.unlink()
    sock.write_text("")
    import os

    os.utime(sock, ns=(1, 1))
    assert host.daemon_key(environ) != before


# --- `./kit shell`: the same options without invoke ----------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("shell", "distributed", "--gpus", "2", "-e", "A=1", "-e", "B", "-p", "8000", "--", "sh", "-c", "exit 7"),
        ("shell", "--name", "dev"),
        ("shell", "distributed", "--name", "dev", "--", "nvidia-smi"),
        ("shell", "distributed", "--workspace", "/src", "--shm-size", "16g", "--mount", "/data:/data", "--network", "host", "--root"),
        ("shell", "distributed", "--base", "nvidia", "--mount", "/a:/a", "--mount", "/b:/b", "-p", "1", "-p", "2"),
    ],
)
def test_kit_shell_parses_every_option_as_invoke_shell_does(captured, argv):
    from mlsyskit.runtime import shell_cli

    assert shell_cli.options(argv[1:]) == captured(*argv)


def test_kit_shell_knows_every_option_the_invoke_task_has():
    from mlsyskit.runtime import shell_cli

    task_flags = {name.replace("_", "-") for name in tasks.shell.get_arguments() for name in [name.name]} - {"topic"}
    cli_flags = {a.dest.replace("_", "-") for a in shell_cli.parser()._actions if a.option_strings and a.dest != "help"}
    assert task_flags == cli_flags


def test_kit_shell_errors_are_one_line_with_the_exit_code(monkeypatch, capsys):
    from mlsyskit.runtime import shell_cli

    assert shell_cli.main(["no-such-topic"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown topic 'no-such-topic'") and "\n" not in err
