"""`invoke shell`'s docker argument lists, decided without Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsyskit.data.config import Config
from mlsyskit.engine import DockerCall
from mlsyskit.engine.spec import run_call
from mlsyskit.errors import UsageError
from mlsyskit.runtime import host, secrets, shell
from mlsyskit.runtime.gpus import GpuSelection
from mlsyskit.runtime.shell import Host, ShellOptions

IMAGE = "mlsyskit/distributed:pypi"
NO_GPU = GpuSelection(None, "none")
TWO_GPUS = GpuSelection('"device=1,3"', "1,3")


def make_host(tmp_path: Path, **changes) -> Host:
    values = dict(
        uid=1000,
        gid=1000,
        user="ada",
        cwd=tmp_path,
        hf_cache=tmp_path / "hf",
        environ={"PATH": "/usr/bin"},
        tty=False,
        memlock=True,
    )
    values.update(changes)
    return Host(**values)


def one_off(tmp_path: Path, opts: ShellOptions | None = None, gpus: GpuSelection = NO_GPU, config: Config | None = None, **host) -> DockerCall:
    opts = opts or ShellOptions(topic="distributed", command=("python", "train.py"))
    h = make_host(tmp_path, **host)
    spec = shell.one_off_spec(
        opts, h, config or Config(), gpus, workspace=tmp_path, topic="distributed", base="pypi", image=IMAGE, secrets_at=tmp_path / "secrets",
    )  # fmt: skip
    return run_call(spec)  # the engine's own translation, tested without an engine


def flag_values(args: tuple[str, ...], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_one_off_runs_the_command_removed_afterwards(tmp_path):
    args = one_off(tmp_path).args
    assert args[:2] == ("run", "--rm") and "--init" in args
    assert args[-3:] == (IMAGE, "python", "train.py")


def test_no_command_opens_a_shell(tmp_path):
    assert one_off(tmp_path, ShellOptions(topic="distributed")).args[-2:] == (IMAGE, "bash")


def test_tty_only_for_a_terminal(tmp_path):
    assert "-t" not in one_off(tmp_path, tty=False).args and "-i" in one_off(tmp_path, tty=False).args
    assert {"-i", "-t"} <= set(one_off(tmp_path, tty=True).args)


def test_shm_ipc_host_by_default_or_the_size_asked(tmp_path):
    default = one_off(tmp_path).args
    assert "--ipc=host" in default and "--shm-size" not in default
    sized = one_off(tmp_path, ShellOptions(topic="distributed", shm_size="16g")).args
    assert flag_values(sized, "--shm-size") == ["16g"] and "--ipc=host" not in sized


def test_limits_memlock_and_stack(tmp_path):
    assert flag_values(one_off(tmp_path).args, "--ulimit") == ["memlock=-1:-1", "stack=67108864"]
    # where the daemon refuses memlock=-1 the container still starts, with the stack limit
    assert flag_values(one_off(tmp_path, memlock=False).args, "--ulimit") == ["stack=67108864"]


def test_workspace_is_the_working_directory(tmp_path):
    args = one_off(tmp_path).args
    assert f"{tmp_path}:/workspace" in flag_values(args, "-v")
    assert flag_values(args, "-w") == ["/workspace"]


def test_runs_as_the_host_user_with_a_writable_home(tmp_path):
    args = one_off(tmp_path).args
    assert flag_values(args, "--user") == ["1000:1000"]
    assert flag_values(args, "--tmpfs") == [
        "/home/kit:exec,uid=1000,gid=1000,mode=0755",
        "/home/kit/.cache:exec,uid=1000,gid=1000,mode=0755",
    ]
    env = flag_values(args, "-e")
    assert {"HOME=/home/kit", "USER=ada", "LOGNAME=ada", "UV_CACHE_DIR=/home/kit/.cache/uv"} <= set(env)
    assert f"{tmp_path / 'hf'}:/home/kit/.cache/huggingface" in flag_values(args, "-v")
    assert "HF_HOME=/home/kit/.cache/huggingface" in env


@pytest.mark.parametrize("how", ["--root", "uid 0"])
def test_root_keeps_the_image_home(tmp_path, how):
    opts = ShellOptions(topic="distributed", root=how == "--root")
    args = one_off(tmp_path, opts, uid=0 if how == "uid 0" else 1000).args
    assert "--user" not in args and "--tmpfs" not in args
    assert f"{tmp_path / 'hf'}:/root/.cache/huggingface" in flag_values(args, "-v")
    assert "org.mlsyskit.shell.user=root" in flag_values(args, "--label")


def test_gpus(tmp_path):
    assert "--gpus" not in one_off(tmp_path, gpus=NO_GPU).args
    args = one_off(tmp_path, gpus=TWO_GPUS).args
    assert flag_values(args, "--gpus") == ['"device=1,3"']
    assert "org.mlsyskit.shell.gpus=1,3" in flag_values(args, "--label")
    assert flag_values(one_off(tmp_path, gpus=GpuSelection("all", "all")).args, "--gpus") == ["all"]


def test_secrets_reach_a_one_off_container_as_files_never_in_argv_or_its_environment(tmp_path):
    """`docker run -e NAME` would put the value in Config.Env (`docker inspect`): tokens come
    as files of the private folder instead, HF's named by HF_TOKEN_PATH, the rest exported by
    the loader the command starts with."""
    environ = {"PATH": "/usr/bin", "HF_TOKEN": "hf_secret", "WANDB_API_KEY": "wandb_secret", "UNRELATED": "x"}
    call = one_off(tmp_path, environ=environ)
    env = flag_values(call.args, "-e")
    assert not any(e.split("=")[0] in ("HF_TOKEN", "WANDB_API_KEY", "UNRELATED") for e in env)
    assert f"HF_TOKEN_PATH={secrets.IN_CONTAINER}/hf_token" in env
    assert f"{tmp_path / 'secrets'}:{secrets.IN_CONTAINER}:ro" in flag_values(call.args, "-v")
    assert call.env == {}  # nothing for docker to copy into the container's environment
    assert call.args[call.args.index(IMAGE) + 1 :] == ("sh", "-c", secrets.LOADER, "mlsyskit-secrets", "python", "train.py")
    assert not any("hf_secret" in a or "wandb_secret" in a for a in call.args)
    assert shell.secret_values(ShellOptions(topic="distributed"), make_host(tmp_path, environ=environ), Config()) == {
        "HF_TOKEN": "hf_secret", "WANDB_API_KEY": "wandb_secret",
    }  # fmt: skip
    with pytest.raises(ValueError, match="needs the private folder"):
        shell.one_off_spec(
            ShellOptions(topic="distributed"), make_host(tmp_path, environ=environ), Config(), NO_GPU,
            workspace=tmp_path, topic="distributed", base="pypi", image=IMAGE,
        )  # fmt: skip
    # without secrets, the command is the command and nothing is mounted for them
    plain = one_off(tmp_path)
    assert plain.args[plain.args.index(IMAGE) + 1 :] == ("python", "train.py") and secrets.IN_CONTAINER not in " ".join(plain.args)


def test_proxies_and_hf_endpoint_from_the_config_at_run_time(tmp_path):
    """A proxy with credentials is a secret (a file, exported by the loader); a proxy without
    them, NO_PROXY and an HF endpoint without credentials stay variables passed by name."""
    config = Config(https_proxy="http://user:pw@proxy:3128", http_proxy="http://proxy:3128", no_proxy="localhost", hf_endpoint="https://hf-mirror.example")
    call = one_off(tmp_path, config=config)
    env = flag_values(call.args, "-e")
    assert {"HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "HF_ENDPOINT"} <= set(env)
    assert not {"HTTPS_PROXY", "https_proxy"} & {e.split("=")[0] for e in env}
    assert not any("pw@" in a or "hf-mirror" in a for a in call.args)  # credentials stay out of argv
    assert "https_proxy" not in call.env and call.env["http_proxy"] == "http://proxy:3128"
    assert call.env["HF_ENDPOINT"] == "https://hf-mirror.example"
    assert secrets.split({"https_proxy": "http://user:pw@proxy:3128", "HF_ENDPOINT": "https://t:x@hub"})[0] == {}


def test_the_hosts_hf_endpoint_passes_when_the_config_has_none(tmp_path):
    call = one_off(tmp_path, environ={"HF_ENDPOINT": "https://mirror"})
    assert "HF_ENDPOINT" in flag_values(call.args, "-e") and call.env == {"HF_ENDPOINT": "https://mirror"}


def test_ca_bundle_is_mounted_read_only(tmp_path):
    args = one_off(tmp_path, config=Config(ca_bundle="/etc/ssl/certs/ca-certificates.crt")).args
    assert "/etc/ssl/certs/ca-certificates.crt:/etc/mlsyskit/ca.pem:ro" in flag_values(args, "-v")
    assert "SSL_CERT_FILE=/etc/mlsyskit/ca.pem" in flag_values(args, "-e")
    assert not any("ca.pem" in a for a in one_off(tmp_path).args)


def test_user_env(tmp_path):
    opts = ShellOptions(topic="distributed", env=("NCCL_DEBUG=INFO", "FROM_HOST", "UNSET_ON_HOST"))
    call = one_off(tmp_path, opts, environ={"FROM_HOST": "1"})
    env = flag_values(call.args, "-e")
    assert "NCCL_DEBUG=INFO" in env and "UNSET_ON_HOST" not in env
    # a host value passed by name may be anything: it travels as a secret (a file the loader exports)
    assert "FROM_HOST" not in env and "FROM_HOST" not in call.env
    assert shell.secret_values(opts, make_host(tmp_path, environ={"FROM_HOST": "1"}), Config()) == {"FROM_HOST": "1"}


def test_extra_mounts(tmp_path):
    (tmp_path / "data").mkdir()
    volumes, mounts = shell.parse_mounts(["data:/data:ro", str(tmp_path / "data"), "type=volume,src=v,dst=/v"], tmp_path)
    assert volumes == (f"{tmp_path / 'data'}:/data:ro", f"{tmp_path / 'data'}:{tmp_path / 'data'}")
    assert mounts == ("type=volume,src=v,dst=/v",)


@pytest.mark.parametrize("spec", ["missing:/data", "data:relative", "a:b:c:d"])
def test_bad_mounts_are_refused(tmp_path, spec):
    (tmp_path / "data").mkdir()
    with pytest.raises(UsageError):
        shell.parse_mounts([spec], tmp_path)


def test_ports_and_network(tmp_path):
    opts = ShellOptions(topic="distributed", ports=("30000", "8080:80", "127.0.0.1:9000:9000", "5000/udp"))
    args = one_off(tmp_path, opts).args
    assert flag_values(args, "-p") == ["30000:30000", "8080:80", "127.0.0.1:9000:9000", "5000:5000/udp"]
    host_net = one_off(tmp_path, ShellOptions(topic="distributed", network="host", ports=("30000",))).args
    assert flag_values(host_net, "--network") == ["host"] and "-p" not in host_net


def test_labels_let_ps_find_and_describe_the_container(tmp_path):
    labels = flag_values(one_off(tmp_path).args, "--label")
    assert "org.mlsyskit.shell=one-off" in labels
    assert "org.mlsyskit.shell.topic=distributed" in labels
    assert f"org.mlsyskit.shell.workspace={tmp_path}" in labels
    assert "org.mlsyskit.shell.user=1000:1000" in labels


def test_named_container_sleeps_and_is_entered_with_exec(tmp_path):
    opts = ShellOptions(topic="distributed", name="dev", env=("A=1",), command=("nvidia-smi",))
    host = make_host(tmp_path, environ={"HF_TOKEN": "t"}, tty=True)
    create = run_call(shell.named_spec(opts, host, Config(), NO_GPU, workspace=tmp_path, topic="distributed", base="pypi", image=IMAGE), detach=True)
    assert create.args[:6] == ("run", "-d", "--name", "dev", "--hostname", "dev")
    assert create.args[-3:] == (IMAGE, "sleep", "infinity")
    assert "org.mlsyskit.shell=named" in flag_values(create.args, "--label")
    assert "HF_TOKEN" not in flag_values(create.args, "-e")  # tokens come with each exec
    assert "A=1" in flag_values(create.args, "-e")
    enter = shell.enter_call(opts, host, Config(), container="dev")
    assert enter.args[:3] == ("exec", "-i", "-t")
    assert flag_values(enter.args, "-w") == ["/workspace"]
    assert "HF_TOKEN" in flag_values(enter.args, "-e") and "A=1" in flag_values(enter.args, "-e")
    assert enter.args[-2:] == ("dev", "nvidia-smi")


def test_creation_options_are_named_when_reentering():
    assert shell.creation_options_given(ShellOptions(name="dev", env=("A=1",), command=("ls",))) == []
    opts = ShellOptions(name="dev", gpus="2", ports=("80",), root=True)
    assert shell.creation_options_given(opts) == ["--gpus", "-p", "--root"]


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (ShellOptions(), "no topic given"),
        (ShellOptions(topic="t", name="bad name"), "not a valid container name"),
        (ShellOptions(topic="t", shm_size="lots"), "not a size"),
        (ShellOptions(topic="t", env=("1BAD=x",)), "is not KEY=VALUE"),
        (ShellOptions(topic="t", ports=("80 81",)), "is not a port"),
        (ShellOptions(topic="t", gpus="0"), "ambiguous"),
    ],
)
def test_malformed_options_are_one_line_errors(opts, message):
    with pytest.raises(UsageError, match=message) as err:
        shell.check_options(opts)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("remainder", "argv", "command"),
    [
        ("", ["invoke", "shell", "t"], ()),
        # invoke joins the words: the argv keeps `sh -c 'exit 7'` as three words
        ("sh -c exit 7", ["invoke", "shell", "t", "--", "sh", "-c", "exit 7"], ("sh", "-c", "exit 7")),
        ("python -m x -- --flag", ["inv", "shell", "t", "--", "python", "-m", "x", "--", "--flag"], ("python", "-m", "x", "--", "--flag")),
        # argv that does not match (invoke called from Python): split like a shell
        ("sh -c 'exit 7'", ["pytest"], ("sh", "-c", "exit 7")),
    ],
)
def test_command_after_the_double_dash(remainder, argv, command):
    assert shell.command_from_argv(remainder, argv) == command


def test_host_hf_cache(tmp_path):
    assert host.host_hf_cache({}, tmp_path) == tmp_path / ".cache" / "huggingface"
    assert host.host_hf_cache({"XDG_CACHE_HOME": "/c"}, tmp_path) == Path("/c/huggingface")
    assert host.host_hf_cache({"HF_HOME": "/models/hf"}, tmp_path) == Path("/models/hf")


# --- published ports that are already taken -----------------------------------------------


@pytest.mark.parametrize(
    "spec, found",
    [
        ("8000", [("", 8000, "tcp")]),
        ("8080:80", [("", 8080, "tcp")]),
        ("127.0.0.1:8000:8000", [("127.0.0.1", 8000, "tcp")]),
        ("9000/udp", [("", 9000, "udp")]),
        ("127.0.0.1::8000", []),  # docker picks the host port
    ],
)
def test_published_ports(spec, found):
    assert host.published_ports([spec]) == found


def test_a_taken_port_is_refused_before_any_container_exists():
    from mlsyskit.errors import EngineError

    taken = {("", 30000, "tcp")}
    opts = ShellOptions(topic="distributed", ports=("8080:80", "30000"))
    with pytest.raises(EngineError) as err:
        shell.check_ports_free(opts, taken=lambda a, p, proto: (a, p, proto) in taken)
    assert err.value.message == "port 30000/tcp is already in use on this host" and err.value.exit_code == 3
    shell.check_ports_free(ShellOptions(topic="distributed", ports=("8080:80",)), taken=lambda *a: False)
    # with the host's network nothing is published, so nothing is checked
    shell.check_ports_free(ShellOptions(topic="distributed", ports=("30000",), network="host"), taken=lambda *a: True)


def test_port_taken_reads_the_host():
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert host.port_taken("127.0.0.1", port)
    assert not host.port_taken("127.0.0.1", port)
