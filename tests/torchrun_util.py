"""Launch ``torch.distributed.run`` on a free port, retrying when the port was taken between
choosing it and binding it (another test, another engineer's job on the same machine)."""
from __future__ import annotations

import socket
import subprocess
import sys

_IN_USE = ("address already in use", "eaddrinuse", "errno 98", "port is already in use")


def free_port() -> int:
    """A TCP port the OS reports free right now (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(args: list, *, nproc: int = 2, attempts: int = 4, **kwargs) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node N --master_addr 127.0.0.1
    --master_port P ARGS``, with a fresh free port per attempt; retried only when the output says
    the port was in use. ``kwargs`` go to ``subprocess.run`` (capture_output/text are set)."""
    kwargs.setdefault("timeout", 600)
    p = None
    for _ in range(attempts):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]
        p = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if p.returncode == 0 or not any(m in (p.stdout + p.stderr).lower() for m in _IN_USE):
            return p
    return p
