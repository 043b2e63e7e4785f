"""A test hook for the fault-injection suite: SIGKILL this process once, at a named point.

Off unless ``PUMA_FAULT_KILL_AT`` is set (nothing in params.yaml turns it on). The long-running loops
call :func:`fault_point` at the moments a crash is interesting:

- ``stage1:<step>`` / ``stage2:<step>``: after optimizer step ``<step>`` (and its checkpoint, if one is due);
- ``teacher_cache:<n>``: after the ``n``-th teacher-cache shard was written;
- ``embed:<n>``: after this process wrote its ``n``-th embedding shard.

``PUMA_FAULT_KILL_AT=stage2:36`` kills the process with SIGKILL (as the kernel's OOM killer or a
pre-emption would: no handler, no cleanup) when stage 2 has done step 36. ``PUMA_FAULT_KILL_GROUP=1``
sends it to the whole process group instead: started by ``dvc repro`` (the flow and the tests start it in
a session of its own), that is ``kill -9`` of ``dvc repro`` and everything it runs. With
``PUMA_FAULT_MARKER=<file>`` the kill happens only if that file does not exist yet (it is created,
atomically, just before), so a retry of the same command (Prefect's ``retries``, a second ``dvc repro``)
runs through.
"""

from __future__ import annotations

import os
import signal

ENV = "PUMA_FAULT_KILL_AT"
MARKER_ENV = "PUMA_FAULT_MARKER"
GROUP_ENV = "PUMA_FAULT_KILL_GROUP"


def fault_point(point: str, n: int) -> None:
    """SIGKILL this process if ``PUMA_FAULT_KILL_AT`` is ``<point>:<n>`` (once per marker file)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, at = spec.rpartition(":")
    try:
        if name != point or int(at) != n:
            return
    except ValueError:
        raise ValueError(f"{ENV}={spec!r}: expected <point>:<integer>, e.g. stage2:36") from None
    marker = os.environ.get(MARKER_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return  # already killed once: this is the retry
        os.write(fd, f"{spec} pid {os.getpid()}\n".encode())
        os.fsync(fd)
        os.close(fd)
    group = os.environ.get(GROUP_ENV, "") not in ("", "0")
    print(f"fault injection: {ENV}={spec}: SIGKILL to {'process group' if group else 'pid'} "
          f"{os.getpgid(0) if group else os.getpid()}", flush=True)
    if group:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


DELAY_ENV = "PUMA_FAULT_DELAY"


def fault_delay(point: str) -> None:
    """Sleep ``<seconds>`` if ``PUMA_FAULT_DELAY`` is ``<point>:<seconds>`` (widens a race window in tests:
    ``promote`` holds it between reading the registry and moving the ``champion`` alias)."""
    spec = os.environ.get(DELAY_ENV)
    if spec and spec.rpartition(":")[0] == point:
        import time

        time.sleep(float(spec.rpartition(":")[2]))


_COUNTS: dict[str, int] = {}


def fault_tick(point: str) -> None:
    """Count one more ``point`` event in this process (e.g. a shard written) and call :func:`fault_point`."""
    _COUNTS[point] = _COUNTS.get(point, 0) + 1
    fault_point(point, _COUNTS[point])


__all__ = ["DELAY_ENV", "ENV", "GROUP_ENV", "MARKER_ENV", "fault_delay", "fault_point", "fault_tick"]
