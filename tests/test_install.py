"""`pip install .` works: the project builds, installs into a fresh virtualenv, and the installed
commands run from outside the repo (including /demo, whose files are package data).

How the install is done without network and in a few seconds:

- The source tree is copied to a temporary directory first (without .git, .venv, caches, build/,
  dist/ or *.egg-info), so the build writes its build/ and *.egg-info there, never into the repo.
- `python -m venv --without-pip` makes the fresh venv (no ensurepip run, so it is fast and holds
  nothing but what the install puts there).
- A .pth file in the fresh venv's site-packages appends the site-packages of the interpreter running
  the tests (the dev .venv). Through it the fresh venv finds pip, the build backend (setuptools >= 61,
  and `wheel` for bdist_wheel while setuptools < 70.1; both from requirements-dev.txt) and the
  runtime dependencies, without downloading anything. Its own site-packages comes first on sys.path,
  so `import server` etc. resolve to the installed copy, which the tests check.
- `<venv>/bin/python -m pip install --no-deps --no-build-isolation --no-index <copy>` builds a wheel
  with the build backend from pyproject.toml and installs it with its console scripts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import jwt
import pytest

from tests.helpers import ROOT, SECRET

# Everything in the repo that is not source: never copied into the build directory.
NOT_SOURCE = shutil.ignore_patterns(".*", "__pycache__", "*.py[cod]", "*.egg-info", "build", "dist", "artifacts")
COMMANDS = ("realtime-gateway", "realtime-gateway-token")


def _requirement_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        lines = (line.split("#", 1)[0].strip() for line in fh)
        return [line for line in lines if line and not line.startswith("-")]


def _normalize(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_pyproject_dependencies_equal_requirements_txt():
    """requirements.txt (what `make run` and the image install) and pyproject.toml (what
    `pip install .` installs) pin the same runtime dependencies."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        declared = tomllib.load(fh)["project"]["dependencies"]
    pinned = _requirement_lines(os.path.join(ROOT, "requirements.txt"))
    assert pinned, "requirements.txt lists no requirements"
    assert sorted(map(_normalize, declared)) == sorted(map(_normalize, pinned))
    assert all("==" in req for req in pinned), "every runtime dependency is pinned"


@dataclass
class Installed:
    venv: str
    site_packages: str
    workdir: str  # outside the repo: the cwd of every command, so the repo is not on sys.path

    def bin(self, name: str) -> str:
        return os.path.join(self.venv, "bin", name)


def _env() -> dict[str, str]:
    """The caller's environment without anything that would put the repo on sys.path or configure
    the gateway from outside the test."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_", "JWT_", "REDIS_", "KAFKA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _check_build_tools() -> None:
    """The build runs without isolation, so the backend must already be in the dev venv."""
    try:
        setuptools = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("setuptools is not installed: pip install -r requirements-dev.txt")
    major, minor = (int(part) for part in setuptools.split(".")[:2])
    assert (major, minor) >= (61, 0), f"setuptools {setuptools} < 61 cannot build from pyproject.toml"
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.fail(f"setuptools {setuptools} needs `wheel` for bdist_wheel: pip install -r requirements-dev.txt")


def _run(cmd: list[str], cwd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    with tempfile.TemporaryDirectory(prefix="rtg-install-") as tmp:
        yield _install(tmp, ROOT)


@pytest.fixture(scope="module")
def sdk_installed() -> Iterator[Installed]:
    """The Python SDK (client/), installed on its own, as an application would."""
    with tempfile.TemporaryDirectory(prefix="rtg-sdk-install-") as tmp:
        yield _install(tmp, os.path.join(ROOT, "client"))


def _install(tmp: str, source: str) -> Installed:
    _check_build_tools()
    src = os.path.join(tmp, "src")
    shutil.copytree(source, src, ignore=NOT_SOURCE, symlinks=True)
    venv = os.path.join(tmp, "venv")
    done = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    assert done.returncode == 0, done.stderr
    python = os.path.join(venv, "bin", "python")
    done = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp)
    assert done.returncode == 0, done.stderr
    site_packages = done.stdout.strip()
    # The dev venv's site-packages, after the fresh venv's own: pip, the build backend, deps.
    outer = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    with open(os.path.join(site_packages, "_dev_venv.pth"), "w", encoding="utf-8") as fh:
        fh.write("".join(f"{path}\n" for path in outer))
    done = _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir", src],
        cwd=tmp,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workdir = os.path.join(tmp, "work")
    os.mkdir(workdir)
    return Installed(venv, site_packages, workdir)


def test_console_scripts_are_installed(installed):
    missing = [name for name in COMMANDS if not os.access(installed.bin(name), os.X_OK)]
    assert missing == []


def test_gateway_command_prints_help(installed):
    done = _run([installed.bin("realtime-gateway"), "--help"], cwd=installed.workdir)
    assert done.returncode == 0, done.stderr
    assert "--port" in done.stdout
    assert done.stdout.startswith("usage: realtime-gateway "), "help names the command as typed"


def test_token_command_mints_a_jwt(installed):
    done = _run(
        [installed.bin("realtime-gateway-token"), "mint", "--sub", "alice", "--secret", SECRET],
        cwd=installed.workdir,
    )
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    usage = _run([installed.bin("realtime-gateway-token"), "--help"], cwd=installed.workdir)
    assert usage.stdout.startswith("usage: realtime-gateway-token "), usage.stdout


def test_client_command_prints_help(sdk_installed):
    done = _run([sdk_installed.bin("realtime-gateway-client"), "--help"], cwd=sdk_installed.workdir)
    assert done.returncode == 0, done.stderr
    assert "chat" in done.stdout and "tail" in done.stdout
    assert done.stdout.startswith("usage: realtime-gateway-client "), "help names the command as typed"


def test_packages_import_from_the_installed_copy(installed):
    code = (
        "import importlib.util, json, handlers, schemas, server, services\n"
        "sdk = [n for n in ('client', 'realtime_gateway_client', 'docgen') if importlib.util.find_spec(n)]\n"
        "print(json.dumps([[m.__file__ for m in (handlers, schemas, server, services)], sdk]))"
    )
    done = _run([installed.bin("python"), "-c", code], cwd=installed.workdir)
    assert done.returncode == 0, done.stderr
    files, sdk = json.loads(done.stdout)
    assert [f for f in files if not f.startswith(installed.site_packages + os.sep)] == []
    assert sdk == [], "the server's distribution carries neither the SDK nor the document generators"


def _top_level_names(site_packages: str) -> set[str]:
    return {
        name.removesuffix(".py")
        for name in os.listdir(site_packages)
        if not name.endswith((".dist-info", ".pth")) and name not in ("__pycache__", "_distutils_hack")
    }


def test_the_sdk_installs_one_distinctive_name_and_imports_without_the_server(sdk_installed):
    assert _top_level_names(sdk_installed.site_packages) == {"realtime_gateway_client"}
    code = (
        "import importlib.util, json, realtime_gateway_client as sdk\n"
        "server = [n for n in ('server', 'handlers', 'services', 'schemas', 'client') if importlib.util.find_spec(n)]\n"
        "print(json.dumps([sdk.__file__, sorted(sdk.__all__)[:3], server]))"
    )
    done = _run([sdk_installed.bin("python"), "-c", code], cwd=sdk_installed.workdir)
    assert done.returncode == 0, done.stderr
    path, names, server = json.loads(done.stdout)
    assert path.startswith(sdk_installed.site_packages + os.sep) and names and server == []


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names)


def test_demo_files_are_package_data(installed):
    source = _files(os.path.join(ROOT, "handlers", "static"))
    assert "client/index.js" in source  # the built JavaScript client the page imports
    assert _files(os.path.join(installed.site_packages, "handlers", "static")) == source


def test_installed_gateway_serves_the_demo_and_stops_on_sigterm(installed):
    proc = subprocess.Popen(
        [
            installed.bin("realtime-gateway"),
            *("--port", "0", "--host", "127.0.0.1", "--jwt-secret", SECRET),
            *("--drain-delay", "0", "--drain-window", "0"),
        ],
        cwd=installed.workdir,
        env=_env(),
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    port: list[int] = []
    listening = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if '"listening"' in line and not listening.is_set():
                port.append(int(json.loads(line)["port"]))
                listening.set()
        listening.set()  # stderr closed: the process ended

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert listening.wait(20) and port, "gateway did not start: " + "".join(lines[-20:])
        with urllib.request.urlopen(f"http://127.0.0.1:{port[0]}/demo", timeout=5) as res:
            assert res.status == 200
            assert res.headers["Content-Type"].startswith("text/html")
            page = res.read().decode()
        assert "<html" in page.lower() and "demo.js" in page
        for asset in ("demo.js", "client/index.js"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port[0]}/demo/{asset}", timeout=5) as res:
                assert res.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, "".join(lines[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(5)
