"""Dependency ranges are claims: the lowest version pyproject.toml allows is one CI tests.

`make test-oldest` (run by .ci/run after `make test`) installs with
``-c constraints/oldest.txt`` and runs this whole suite, so every floor is tested only
while that file pins every direct dependency at exactly its floor.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.profile import py_spy

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("client", "test", "bench", "cluster")  # what the Makefile installs


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def _release(version: str) -> tuple[int, ...]:
    """The release as numbers without trailing zeros: 3.12 and 3.12.0 are equal."""
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    floors: dict[str, str] = {}
    for requirement in requirements:
        spec = requirement.split(";")[0]
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1)
        floor = re.search(r">=\s*([0-9][0-9.]*)", spec)
        assert floor, f"{requirement!r} has no floor (>=)"
        assert floors.setdefault(_name(name), floor.group(1)) == floor.group(1), (
            f"{name} has two different floors in pyproject.toml"
        )
    return floors


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints" / "oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints/oldest.txt: {line!r} is not name==version"
            pins[_name(name.strip())] = version.strip()
    return pins


def test_oldest_constraints_pin_every_direct_dependency_at_its_floor():
    floors, pins = _floors(), _pins()
    assert sorted(set(floors) - set(pins)) == [], "direct dependencies missing from oldest.txt"
    assert sorted(set(pins) - set(floors)) == [], "pinned in oldest.txt, not in pyproject.toml"
    wrong = {n: (floors[n], pins[n]) for n in floors if _release(floors[n]) != _release(pins[n])}
    assert wrong == {}, "pyproject floor vs constraints/oldest.txt pin"


@pytest.mark.skipif(py_spy() is None, reason="py-spy (the bench extra) is not installed")
def test_py_spy_samples_this_python(tmp_path):
    """`make bench` profiles the server with py-spy; older releases can't read CPython 3.11."""
    out = tmp_path / "profile.txt"
    busy = "import time\nt = time.time()\nwhile time.time() - t < 1.5: sum(range(1000))\n"
    done = subprocess.run(
        [py_spy(), "record", "-d", "1", "-r", "50", "-f", "raw", "-o", str(out),
         "--", sys.executable, "-c", busy],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-400:]
    assert "<module> (<string>" in out.read_text()
