"""Locate and run the SUMO command-line tools shipped by the ``eclipse-sumo`` wheel."""
from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path


class SumoToolError(RuntimeError):
    """A SUMO tool is missing or exited with an error; the message carries its output tail."""


@lru_cache(maxsize=1)
def sumo_home() -> Path:
    """``SUMO_HOME`` of the installed ``eclipse-sumo`` package (or of the environment variable)."""
    try:
        import sumo  # the eclipse-sumo wheel
        home = Path(sumo.SUMO_HOME)
    except ImportError:
        env = os.environ.get("SUMO_HOME")
        if not env:
            raise SumoToolError("SUMO is not installed: pip install 'trafficbots-gym[sumo]' "
                                "(eclipse-sumo, libsumo) or set SUMO_HOME") from None
        home = Path(env)
    if not (home / "bin").is_dir():
        raise SumoToolError(f"SUMO_HOME {home} has no bin/ folder")
    return home


def sumo_env() -> dict[str, str]:
    """The process environment with ``SUMO_HOME`` set (the tools look up their schemas there)."""
    env = dict(os.environ)
    env["SUMO_HOME"] = str(sumo_home())
    return env


def binary(name: str) -> str:
    """Absolute path of the SUMO binary ``name`` (netgenerate, netconvert, duarouter, ...)."""
    path = sumo_home() / "bin" / name
    if not path.is_file():
        raise SumoToolError(f"SUMO binary {name!r} not found in {path.parent}")
    return str(path)


def tool_script(relpath: str) -> str:
    """Absolute path of a SUMO python tool, e.g. ``randomTrips.py``."""
    path = sumo_home() / "tools" / relpath
    if not path.is_file():
        raise SumoToolError(f"SUMO tool {relpath!r} not found in {path.parent}")
    return str(path)


def run(args: list[str], cwd: Path) -> None:
    """Run a SUMO tool (binary name or ``*.py`` tool) in ``cwd``; raise ``SumoToolError`` on failure."""
    cmd = [sys.executable, tool_script(args[0])] + args[1:] if args[0].endswith(".py") else \
        [binary(args[0])] + args[1:]
    proc = subprocess.run(cmd, cwd=cwd, env=sumo_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise SumoToolError(f"{args[0]} failed (exit {proc.returncode}) in {cwd}:\n{tail}")
