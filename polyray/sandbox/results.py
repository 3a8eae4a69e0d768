"""What a run reports, and how a limit it hit or the launcher's status report becomes that report."""

from __future__ import annotations

import json
import signal
from typing import Literal

from pydantic import BaseModel, Field

from polyray.sandbox.limits import SandboxLimits

Status = Literal["passed", "failed", "timeout", "error", "killed"]


class SandboxResult(BaseModel):
    """What happened to one program."""

    status: Status = Field(
        ..., description="passed (exit 0), failed (exit != 0), timeout, killed (signal or limit), error (sandbox)."
    )
    passed: bool = Field(..., description="status == 'passed'.")
    returncode: int | None = Field(None, description="Exit code, when the program exited.")
    signal: int | None = Field(None, description="Signal that ended the program, when one did.")
    stdout: str = Field("", description="Tail of standard output.")
    stderr: str = Field("", description="Tail of standard error.")
    truncated: bool = Field(False, description="Output exceeded the limit (the program was killed).")
    duration_s: float = Field(..., description="Wall-clock seconds from start to cleanup.")
    isolation: str = Field(..., description="Isolation mode that was active.")
    reason: str = Field("", description="Human-readable explanation of the status.")


def _interpret(status_bytes: bytes, limit_hit: str | None, limits: SandboxLimits) -> dict:
    if limit_hit == "timeout":
        return {"status": "timeout", "reason": f"wall-clock timeout after {limits.timeout_s:g}s"}
    if limit_hit == "cancelled":
        return {"status": "killed", "reason": "stopped early by the caller"}
    if limit_hit == "output":
        return {"status": "killed", "truncated": True, "reason": f"output exceeded {limits.output_bytes} bytes"}
    try:
        # The first JSON object wins: a start failure is followed by init's report of exit 127.
        report = json.loads(status_bytes.decode().replace("}{", "}\n{").splitlines()[0])
    except (ValueError, IndexError):
        return {"status": "error", "reason": "the sandbox ended without reporting a status"}
    if "error" in report:
        return {"status": "error", "reason": report["error"]}
    if "signal" in report:
        sig = report["signal"]
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        why = " (CPU time limit)" if sig == signal.SIGXCPU else ""
        return {"status": "killed", "signal": sig, "reason": f"killed by {name}{why}"}
    code = report["exit"]
    if code == 0:
        return {"status": "passed", "returncode": 0, "reason": "exited 0"}
    return {"status": "failed", "returncode": code, "reason": f"exited {code}"}
