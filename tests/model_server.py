"""`mlflow models serve` on loopback for the serving test and bench/serving_latency.py: start, wait, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_model_server(model_uri: str, workdir: Path, port: int, seconds: float = 300) -> subprocess.Popen:
    """`mlflow models serve -m <uri> --env-manager local` on 127.0.0.1:`port`, once it answers /ping.

    Its log is `workdir/serve.log`; it runs in a process group of its own (the CLI and the server it starts).

    Raises:
        RuntimeError: the server exited, or did not answer within `seconds` (it is stopped then).
    """
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port)],
        cwd=workdir, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, start_new_session=True,
        stdout=open(workdir / "serve.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115 - the child owns it
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited ({server.returncode}); see {workdir / 'serve.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    stop_model_server(server)
    raise RuntimeError(f"mlflow models serve did not answer /ping within {seconds:.0f} s; see {workdir / 'serve.log'}")


def stop_model_server(server: subprocess.Popen) -> None:
    """Ends the server's own process group, by its id."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
