"""Run Argo CD Lua health scripts with a real Lua interpreter (lua5.4) on sample objects.

Owns the bridge: Python objects become Lua table literals (Lua has no JSON library),
a tiny harness sets the global `obj` (as Argo CD does), runs the script as a chunk and
prints the returned table's status and message.
Argo CD embeds gopher-lua (Lua 5.1); the scripts stick to the 5.1 subset so that passing
here under 5.4 means what it says.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any


def lua_binary() -> str:
    for name in ("lua5.4", "lua5.3", "lua"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("no Lua interpreter: apt-get install -y lua5.4")


def lua_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def to_lua(value: Any) -> str:
    """A Lua expression for a JSON-like value (None in a table drops the key, like JSON null in Argo CD)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        items = [f"[{lua_string(str(k))}] = {to_lua(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot express {type(value).__name__} in Lua")


HARNESS = """
obj = {obj}
local chunk = assert(loadfile({script}))
local hs = chunk()
assert(type(hs) == "table", "health script must return a table")
io.write(tostring(hs.status), "\\n", tostring(hs.message))
"""


def run_health(script: Path, obj: dict[str, Any], tmp: Path) -> tuple[str, str]:
    harness = tmp / "harness.lua"
    harness.write_text(HARNESS.format(obj=to_lua(obj), script=lua_string(str(script))))
    r = subprocess.run([lua_binary(), str(harness)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, f"lua failed: {r.stderr}"
    status, _, message = r.stdout.partition("\n")
    return status, message
