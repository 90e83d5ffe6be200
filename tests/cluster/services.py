"""Real services on loopback for the cluster tests and bench/cluster_scaling.py.

Everything runs inside a network namespace of our own that has only loopback
(`loopback_namespace`): Ray would otherwise replace 127.0.0.1 with the machine's outside
address, and nothing here may send traffic there. Each service is a real engine started
the way the README tells a lab to start it by hand:

- `Postgres`: Debian's PostgreSQL server, `initdb` and `pg_ctl` run as the `postgres`
  user (it refuses root), listening on 127.0.0.1 only, with one role and the databases
  for MLflow's store, MLflow's user store and the Optuna study.
- `MlflowServer`: `mlflow server` on that PostgreSQL with proxied artifacts and
  `--app-name basic-auth`; the admin user comes from the environment.
- `RayNode`: `ray start --head` or `ray start --address=...` with declared CPUs and GPUs
  and token authentication, each node in a process group of its own so that a test can
  kill one node (the fault test) without touching the other.

Each `stop()` ends what its `start()` began, and nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

CLONE_NEWNET = 0x40000000
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def loopback_namespace() -> Iterator[None]:
    """Moves this thread (and every process it starts) into a new network namespace with only `lo` up.

    Needs root (CAP_SYS_ADMIN), as in CI; the previous namespace is restored on exit.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    saved = os.open("/proc/self/ns/net", os.O_RDONLY)
    if libc.unshare(CLONE_NEWNET) != 0:
        os.close(saved)
        error = ctypes.get_errno()
        raise OSError(error, f"unshare(CLONE_NEWNET) failed ({os.strerror(error)}): the cluster tests need root "
                             "to make a network namespace with only loopback")
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield
    finally:
        libc.setns(saved, CLONE_NEWNET)
        os.close(saved)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check, what: str, timeout: float = 60.0, interval: float = 0.3):
    """Calls `check` until it returns something truthy; raises naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s" + (f" (last error: {last})" if last else ""))


def _postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise FileNotFoundError(f"PostgreSQL's {name} not found: install Debian's postgresql package "
                            "(`apt-get install postgresql`; .ci/run does)")


@dataclass
class Postgres:
    """A PostgreSQL server of our own on 127.0.0.1, run by the `postgres` user, in a folder of its own.

    The folder is a new one under the system's temporary folder (the `postgres` user cannot
    enter a root-only test folder); `stop()` removes it.
    """

    user: str = "medxp"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    databases: tuple[str, ...] = ("mlflow", "mlflow_auth", "optuna")
    port: int = 0
    root: Path = Path()

    def start(self) -> "Postgres":
        self.port = self.port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="medxp-pg-"))
        self.root.chmod(0o711)
        data, sockets = self.root / "pgdata", self.root / "pgsock"
        sockets.mkdir()
        for path in (self.root, sockets):
            shutil.chown(path, "postgres", "postgres")
        self.data, self.sockets = data, sockets
        self._as_postgres([_postgres_bin("initdb"), "-D", str(data), "-A", "scram-sha-256", "-U", "postgres",
                           f"--pwfile={self._pwfile()}", "--no-sync"])
        self._as_postgres([_postgres_bin("pg_ctl"), "-D", str(data), "-l", str(self.root / "postgres.log"), "-w",
                           "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sockets} -c fsync=off "
                                 "-c max_connections=300", "start"])
        self._sql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        for database in self.databases:
            self._sql(f"CREATE DATABASE {database} OWNER {self.user}")
        return self

    def url(self, database: str, *, password: bool = True, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of one database (with or without the password)."""
        secret = f":{self.password}" if password else ""
        return f"{driver}://{self.user}{secret}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if getattr(self, "data", None) and (self.data / "postmaster.pid").exists():
            self._as_postgres([_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                              check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _pwfile(self) -> Path:
        path = self.root / "superuser.pw"
        path.write_text(self.password + "\n")
        shutil.chown(path, "postgres", "postgres")
        path.chmod(0o600)
        return path

    def _sql(self, statement: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                        "-v", "ON_ERROR_STOP=1", "-qc", statement], check=True, env=env, capture_output=True)

    def _as_postgres(self, command: list[str], check: bool = True) -> None:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True)
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


@dataclass
class MlflowServer:
    """`mlflow server` on PostgreSQL with proxied artifacts and basic-auth, on 127.0.0.1."""

    postgres: Postgres
    root: Path
    admin_user: str = "medxp-admin"
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        self.port = self.port or free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        ini = self.root / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = {self.postgres.url('mlflow_auth', password=False)}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                       # Each request's password check is a PBKDF2 hash; cached for a minute it stops
                       # taking most of the server's CPU under a search's stream of metric calls.
                       "auth_cache_ttl_seconds = 60\n")
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": self.admin_user,
               "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
               "PGPASSWORD": self.postgres.password}  # libpq reads it: no password on any command line
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)
        log = open(self.root / "mlflow-server.log", "w")  # noqa: SIM115 - closed by stop()
        self._log = log
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", self.postgres.url("mlflow", password=False),
             "--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts"),
             "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        wait_until(self._healthy, f"mlflow server on {self.uri} (log: {self.root / 'mlflow-server.log'})",
                   timeout=120)
        return self

    def _healthy(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {self.process.returncode}; see "
                               f"{self.root / 'mlflow-server.log'}:\n{(self.root / 'mlflow-server.log').read_text()[-3000:]}")
        with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
            return response.status == 200

    def status_without_credentials(self) -> int:
        """HTTP status of a search-experiments call that carries no credentials."""
        request = urllib.request.Request(f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def client_env(self) -> dict[str, str]:
        """What a driver or worker needs to reach this server."""
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": self.admin_user,
                "MLFLOW_TRACKING_PASSWORD": self.admin_password}

    def stop(self) -> None:
        _stop_group(self.process)
        if getattr(self, "_log", None):
            self._log.close()


@dataclass
class RayNode:
    """One Ray node (`ray start --block`) in a process group of its own; the head when `address` is empty."""

    root: Path
    token: str
    num_cpus: int
    num_gpus: int = 0
    address: str = ""
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    wrapper: list[str] = field(default_factory=list)  # runs `ray start` inside it (a mount namespace, say)
    process: subprocess.Popen | None = None

    @property
    def head_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "RayNode":
        self.root.mkdir(parents=True, exist_ok=True)
        command = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--num-cpus={self.num_cpus}",
                   f"--num-gpus={self.num_gpus}", "--node-ip-address=127.0.0.1"]
        if self.address:
            command.append(f"--address={self.address}")
            name = f"ray-worker-{self.root.name}"
        else:
            self.port = self.port or free_port()
            # Ray's session folder holds unix sockets, whose paths must stay under 108 bytes: a short folder.
            self.temp_dir = Path(tempfile.mkdtemp(prefix="medxp-ray-", dir="/tmp"))
            command += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"]
            name = "ray-head"
        self._log = open(self.root.parent / f"{name}.log", "w")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen([*self.wrapper, *command], env={**os.environ, **self.ray_env(), **self.env}, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def ray_env(self) -> dict[str, str]:
        """Token authentication: every node and every driver of the cluster shares this token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop_group(self.process, sig, grace=5.0)  # a stopping node drains for 30 s; nothing here needs that
        if getattr(self, "_log", None):
            self._log.close()
        if getattr(self, "temp_dir", None):
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_for_nodes(address: str, token: str, count: int, timeout: float = 120) -> list[dict]:
    """Waits until the cluster at `address` has `count` live nodes; returns them (`ray.nodes()`)."""
    script = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
              "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))" % address)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}

    def alive() -> list[dict] | None:
        import json

        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
        if result.returncode:
            raise RuntimeError(result.stderr[-500:])
        nodes = json.loads(result.stdout.strip().splitlines()[-1])
        return nodes if len(nodes) >= count else None

    return wait_until(alive, f"a Ray cluster of {count} node(s) at {address}", timeout=timeout, interval=1.0)


class ServiceStack:
    """Services started in order and stopped in reverse (each `stop()` ends what its `start()` began)."""

    def __init__(self) -> None:
        self.started: list = []
        self.postgres: Postgres | None = None
        self.server: MlflowServer | None = None

    def start(self, service):
        """Starts `service` and keeps it for the stop on exit; returns it started."""
        self.started.append(service.start())
        return self.started[-1]

    def stop(self, also: list | tuple = ()) -> None:
        for service in reversed([*self.started, *also]):
            service.stop()


@contextlib.contextmanager
def tracking_stack(root: Path) -> Iterator[ServiceStack]:
    """PostgreSQL and the `mlflow server` on it (its files under `root / "mlflow"`); whatever else is started
    on the stack (Ray nodes) is stopped with them, in reverse order, however the block ends."""
    stack = ServiceStack()
    try:
        stack.postgres = stack.start(Postgres())
        stack.server = stack.start(MlflowServer(stack.postgres, root / "mlflow"))
        yield stack
    finally:
        stack.stop()


def _stop_group(process: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """Sends `sig` to the process group `process` leads, then SIGKILL to whatever is left after `grace` s."""
    if process is None or process.poll() is not None and not _group_alive(process.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(process.pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
