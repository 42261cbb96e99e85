"""The torchrun launcher used by the distributed tests retries on a port taken under it."""
import socket
import subprocess

from tests import torchrun_util


def test_free_port_is_bindable():
    port = torchrun_util.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_retries_only_when_the_port_was_in_use(monkeypatch):
    calls = []
    outputs = iter([(1, "RuntimeError: The server socket has failed to listen on any local network address. "
                        "port: 29500, useIpv6: 0, code: -98, name: EADDRINUSE, message: address already in use"),
                    (0, "ok")])

    def fake_run(cmd, **kw):
        calls.append(cmd[cmd.index("--master_port") + 1])
        rc, err = next(outputs)
        return subprocess.CompletedProcess(cmd, rc, "", err)

    monkeypatch.setattr(torchrun_util.subprocess, "run", fake_run)
    assert torchrun_util.run_torchrun(["x.py"]).returncode == 0
    assert len(calls) == 2
    calls.clear()
    monkeypatch.setattr(torchrun_util.subprocess, "run",
                        lambda cmd, **kw: (calls.append(1), subprocess.CompletedProcess(cmd, 1, "", "boom"))[1])
    assert torchrun_util.run_torchrun(["x.py"]).returncode == 1 and len(calls) == 1  # other errors: no retry
