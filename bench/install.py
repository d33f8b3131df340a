"""Idempotent installs: nginx and wrk from Debian, peers into bench-only environments.

A peer that cannot be installed is reported as not available, with the reason; the run
goes on without it. nginx and wrk are required: without them there is nothing to run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LITELLM_VENV = BENCH / ".venv-litellm"
PORTKEY_DIR = BENCH / ".node-portkey"
TOOLS_VENV = BENCH / ".venv-tools"
PORTKEY_ENTRY = PORTKEY_DIR / "node_modules/@portkey-ai/gateway/build/start-server.js"
OPENLOOP_SRC = BENCH / "openloop.c"
OPENLOOP_EXE = BENCH / ".bin/openloop"


@dataclass
class Installed:
    ok: bool
    path: Path | None = None
    version: str = ""
    reason: str = ""


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> tuple[int, str]:
    print("  $ " + " ".join(cmd), flush=True)
    try:
        p = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, str(e)
    return p.returncode, (p.stdout + p.stderr)[-2000:]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


_apt_updated = False


def apt_install(packages: list[str]) -> str | None:
    """Install Debian packages whose commands are missing; None, or why it failed."""
    global _apt_updated
    missing = [p for p in packages if shutil.which(p) is None]
    if not missing:
        return None
    if not _apt_updated:
        rc, out = _run(["apt-get", "update", "-qq"], timeout=300)
        if rc != 0:
            return "apt-get update failed: " + _last_line(out)
        _apt_updated = True
    rc, out = _run(["apt-get", "install", "-y", "-qq", *missing], timeout=600)
    if rc != 0:
        return f"apt-get install {' '.join(missing)} failed: " + _last_line(out)
    return None


def _venv(path: Path) -> str | None:
    if (path / "bin/python").exists():
        return None
    rc, out = _run([sys.executable, "-m", "venv", str(path)], timeout=120)
    return None if rc == 0 else "venv failed: " + _last_line(out)


def _dist_version(python: Path, dist: str) -> str:
    rc, out = _run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        timeout=60,
    )
    return out.strip() if rc == 0 else "?"


def litellm() -> Installed:
    exe = LITELLM_VENV / "bin/litellm"
    if not exe.exists():
        err = _venv(LITELLM_VENV)
        if err:
            return Installed(False, reason=err)
        pip = str(LITELLM_VENV / "bin/pip")
        rc, out = _run([pip, "install", "-q", "litellm[proxy]"], timeout=1200)
        if rc != 0 or not exe.exists():
            return Installed(False, reason="pip install litellm[proxy] failed: " + _last_line(out))
    return Installed(True, exe, _dist_version(LITELLM_VENV / "bin/python", "litellm"))


def portkey() -> Installed:
    if not PORTKEY_ENTRY.exists():
        err = apt_install(["node", "npm"]) if shutil.which("npm") is None else None
        if err:
            return Installed(False, reason=err)
        PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
        pkg = PORTKEY_DIR / "package.json"
        if not pkg.exists():
            pkg.write_text('{"name": "bench-portkey", "private": true}\n')
        rc, out = _run(
            ["npm", "install", "--no-audit", "--no-fund", "@portkey-ai/gateway"],
            timeout=900,
            cwd=PORTKEY_DIR,
        )
        if rc != 0 or not PORTKEY_ENTRY.exists():
            return Installed(
                False, reason="npm install @portkey-ai/gateway failed: " + _last_line(out)
            )
    meta = json.loads((PORTKEY_ENTRY.parent.parent / "package.json").read_text())
    return Installed(True, PORTKEY_ENTRY, str(meta.get("version", "?")))


def py_spy() -> Installed:
    exe = TOOLS_VENV / "bin/py-spy"
    if not exe.exists():
        err = _venv(TOOLS_VENV)
        if err:
            return Installed(False, reason=err)
        rc, out = _run([str(TOOLS_VENV / "bin/pip"), "install", "-q", "py-spy"], timeout=600)
        if rc != 0 or not exe.exists():
            return Installed(False, reason="pip install py-spy failed: " + _last_line(out))
    return Installed(True, exe, _dist_version(TOOLS_VENV / "bin/python", "py-spy"))


def openloop_client() -> Installed:
    """bench/openloop.c, built with the machine's C compiler whenever the source is newer
    than the binary."""
    exe = OPENLOOP_EXE
    if not exe.exists() or exe.stat().st_mtime < OPENLOOP_SRC.stat().st_mtime:
        if shutil.which("cc") is None:
            err = apt_install(["gcc"])
            if err:
                return Installed(False, reason=err)
        exe.parent.mkdir(exist_ok=True)
        cmd = ["cc", "-O2", "-Wall", "-o", str(exe), str(OPENLOOP_SRC), "-lm"]
        rc, out = _run(cmd, timeout=120)
        if rc != 0:
            return Installed(False, reason="cc openloop.c failed: " + _last_line(out))
    return Installed(True, exe, "openloop.c")
