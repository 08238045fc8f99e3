"""scripts/prerequisites.sh: `make test` names every missing tool up front, in one line each, and
exits 2 before installing or starting anything (README.md, "What each command needs")."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.helpers import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "prerequisites.sh")
# What the script itself runs; everything else is left off PATH.
SHELL_TOOLS = ("bash", "grep", "sed", "head", "cut", "id", "cat", "uname")


def run(path: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_this_machine_has_what_make_test_needs():
    done = run(os.environ["PATH"])
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_each_missing_tool_is_one_line_naming_how_to_get_it(tmp_path):
    for tool in SHELL_TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (tmp_path / tool).symlink_to(found)
    done = run(str(tmp_path))
    assert done.returncode == 2
    missing = [line for line in done.stderr.splitlines() if line.startswith("  missing: ")]
    named = " ".join(missing)
    for tool in ("python3", "node and npm", "java", "redis-server"):
        assert tool in named, done.stderr
    assert all("(" in line for line in missing), "each line says how to get it"
    assert len(missing) == len(set(missing))
