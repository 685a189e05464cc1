"""The wheel of this checkout, built, installed into a fresh virtual environment and served
from: what a release ships works without the source tree (docs/releasing.md).

Offline: the wheel is built with the running environment's setuptools (--no-build-isolation,
from a copy of the project so that nothing is written into the checkout), installed with
--no-deps and --no-index, and the fresh environment finds the runtime dependencies (h11,
uvloop, click, ...) through a .pth line naming the running environment's site-packages, which
holds no hardserve of its own (the development install points at src/ through a finder that
a .pth line does not run). Every check then asserts that `hardserve` was imported from the
fresh environment.

The copy that is built gets one synthetic advisory (never committed as a real one) beside the
real ones, so the package data is shown to reach the wheel and to be read from an installed
hardserve even while no advisory has been published.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import hardserve
from tests.conftest import ALLOW_ROOT
from tests.helpers import ROOT, TIMEOUT_S

pytestmark = pytest.mark.timeout(180)

SRC = ROOT / "src"
BUILD_TIMEOUT_S = 120
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")
SYNTHETIC_ID = "HSEC-2099-1"  # affects versions before 0.0.1 (the template's range)
LISTENING_RE = re.compile(r"listening at http://(?P<host>[^\s:]+):(?P<port>\d+)")


def quiet_env(**extra: str) -> dict[str, str]:
    """The runner's environment without anything that would make Python or hardserve look
    elsewhere (PYTHONPATH, a virtual environment, HARDSERVE_* settings, PORT)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "HARDSERVE_", "PIP_", "LISTEN_", "VIRTUAL_ENV"))
        and name not in ("PORT", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    env.update(ALLOW_ROOT)
    env.update(extra)
    return env


def run(command: list[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env=quiet_env(),
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(
        SRC, project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    )
    synthetic = json.loads((ROOT / "security" / "advisories" / "TEMPLATE.json").read_text())
    synthetic["id"] = SYNTHETIC_ID
    (project / "src" / "hardserve" / "_advisories" / f"{SYNTHETIC_ID}.json").write_text(
        json.dumps(synthetic)
    )
    out = tmp_path_factory.mktemp("dist")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "-w", out, project]
    )  # fmt: skip
    (built,) = out.glob("hardserve-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", home])
    python = home / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--quiet", wheel]
    )  # fmt: skip
    # The runtime dependencies, from the running environment, which must not hold hardserve.
    site_dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for site in map(Path, site_dirs):
        assert not (site / "hardserve").exists(), f"{site} holds a hardserve package"
        assert site.resolve() != SRC.resolve()
    target_site = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    (target_site / "_hardserve_test_dependencies.pth").write_text(
        "".join(f"{site}\n" for site in site_dirs)
    )
    return home


def test_the_wheel_holds_the_package_its_data_and_licence_and_no_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"hardserve", f"hardserve-{hardserve.__version__}.dist-info"}, tops
    expected = {
        path.relative_to(SRC).as_posix()
        for path in (SRC / "hardserve").rglob("*")
        if path.is_file() and path.suffix in (".py", ".typed", ".json")
        and "__pycache__" not in path.parts
    }  # fmt: skip
    assert {"hardserve/py.typed", "hardserve/_advisories/__init__.py"} <= expected
    assert expected <= set(names), sorted(expected - set(names))
    advisories = {p.name for p in (SRC / "hardserve" / "_advisories").glob("*.json")}
    assert advisories | {f"{SYNTHETIC_ID}.json"} == {
        Path(n).name
        for n in names
        if n.startswith("hardserve/_advisories/") and n.endswith(".json")
    }
    assert any(re.fullmatch(r"hardserve-[^/]+\.dist-info/(licenses/)?LICENSE", n) for n in names)
    assert not [n for n in names if "tests/" in n or n.startswith(("bench/", "security/"))]


def test_the_installed_hardserve_comes_from_the_wheel(venv: Path) -> None:
    probe = (
        "import json, sys, hardserve, hardserve.advisories as a, hardserve.dependencies as d; "
        "found = a.bundled_advisories(); "
        "print(json.dumps({'file': hardserve.__file__, 'path': sys.path, "
        "'advisories': [r['id'] for r in found], "
        "'affecting_0.0.0': [r['id'] for r in a.affecting('0.0.0', found)], "
        "'affecting_this': [r['id'] for r in a.affecting(hardserve.__version__, found)], "
        "'floors': d.check_floors()}))"
    )
    found = json.loads(run([venv / "bin" / "python", "-c", probe], cwd=venv).stdout)
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert str(SRC) not in found["path"] and str(ROOT) not in found["path"]
    real = [p.stem for p in (SRC / "hardserve" / "_advisories").glob("*.json")]
    assert found["advisories"] == sorted([*real, SYNTHETIC_ID])
    assert SYNTHETIC_ID in found["affecting_0.0.0"]
    assert found["affecting_this"] == []
    assert found["floors"] == []


def test_the_console_script_shows_its_version(venv: Path) -> None:
    shown = run([venv / "bin" / "hardserve", "--version"], cwd=venv).stdout
    assert shown.startswith(f"hardserve {hardserve.__version__} (Python "), shown
    assert "h11 0." in shown or "h11 1." in shown, shown


@pytest.fixture
def served(venv: Path) -> Iterator[tuple[str, int]]:
    """The demo app served by the installed console script on a port the kernel picks."""
    process = subprocess.Popen(
        [str(venv / "bin" / "hardserve"), "hardserve.demo:app", "--bind", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=quiet_env(),
        cwd=venv,
    )
    lines: list[str] = []
    found: list[re.Match[str]] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if not found and (match := LISTENING_RE.search(line)):
                found.append(match)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(TIMEOUT_S) and found, "did not start:\n" + "".join(lines)
        yield found[0]["host"], int(found[0]["port"])
    finally:
        process.terminate()
        try:
            process.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT_S)


def status_of(address: tuple[str, int], target: str) -> int:
    with socket.create_connection(address, timeout=TIMEOUT_S) as client:
        client.sendall(
            f"GET {target} HTTP/1.1\r\nHost: wheel.test\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match, answer[:200]
    return int(match.group(1))


def test_the_installed_server_serves_the_demo_and_refuses_a_traversal(
    served: tuple[str, int],
) -> None:
    assert status_of(served, "/") == 200
    assert status_of(served, "/../etc/passwd") == 400
    assert status_of(served, "/static/%2e%2e/%2e%2e/etc/passwd") == 400
