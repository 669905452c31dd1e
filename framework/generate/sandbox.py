"""Running generated Python against tests in a sandbox (what it contains: ``docs/sandbox.md``).

:func:`run_python_tests` starts a fresh interpreter per program, in new namespaces where the
machine allows them (``unshare``: network, pid, mount, IPC), under resource limits, as an
unprivileged user when tempering runs as root, with an audit hook as a last layer. The boot
code that runs inside is ``_sandbox_boot.py``; this module starts it, enforces the wall-clock
limit and reads the outcome.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxError", "SandboxLimits", "SandboxResult", "run_python_tests",
           "sandbox_layers"]

_BOOT = Path(__file__).with_name("_sandbox_boot.py")
_BLOCKED_EXIT, _SETUP_EXIT = 86, 87
NOBODY = 65534
_UNSHARE = ("--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts")


class SandboxError(RuntimeError):
    """The sandbox cannot be set up on this machine (not a verdict on the program)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. ``memory_mb`` is the address space (``RLIMIT_AS``); ``output_kb``
    caps each of stdout/stderr and any file the program writes (``RLIMIT_FSIZE``).
    ``interpreter`` is the Python that runs the program (default: the one running tempering).
    ``audit_hook: False`` leaves out the last, in-interpreter layer (the tests use it to show
    that the operating-system layers contain each escape on their own)."""

    cpu_seconds: float = 5.0
    wall_seconds: float = 10.0
    memory_mb: int = 512
    processes: int = 32
    open_files: int = 64
    output_kb: int = 1024
    tmpfs_mb: int = 64
    require_namespaces: bool = True
    audit_hook: bool = True
    interpreter: str = ""

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds", "memory_mb", "processes", "open_files",
                     "output_kb", "tmpfs_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SandboxResult:
    """``status``: passed | failed | exited_early (exit 0 before the tests finished) |
    timeout (wall clock) | cpu_time | memory | output_limit | blocked (the audit hook ended it;
    ``blocked`` names the event)."""

    passed: bool
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    blocked: str | None = None


def _namespace_prefix() -> list[str]:
    base = ["unshare", *_UNSHARE]
    return base if os.geteuid() == 0 else [*base[:1], "--map-root-user", *base[1:]]


@functools.cache
def _namespaces_work() -> str | None:
    """None when ``unshare`` can make the namespaces here, else why not."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "unshare(1) is not available (Linux only)"
    try:
        done = subprocess.run([*_namespace_prefix(), "--", "true"], capture_output=True,
                              timeout=30, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    return None if done.returncode == 0 else f"unshare failed: {done.stderr.strip()}"


def sandbox_layers(limits: SandboxLimits | None = None) -> list[str]:
    """The containment layers a sandboxed program gets on this machine, in the order they
    are applied; raises :class:`SandboxError` when ``require_namespaces`` cannot be met."""
    limits = limits or SandboxLimits()
    layers = ["process (new session, killed with its group at the wall-clock limit)"]
    why = _namespaces_work()
    if why is None:
        layers += ["namespaces: network, pid, mount, ipc, uts",
                   "filesystem: read-only except a tmpfs working directory; home hidden"]
    elif limits.require_namespaces:
        raise SandboxError(f"the python_tests sandbox needs Linux namespaces: {why}; set "
                           "require_namespaces: false to run with the weaker layers only "
                           "(docs/sandbox.md)")
    layers.append("rlimits: cpu, address space, processes, file size, open files, no core")
    if os.geteuid() == 0:
        problem = _unreadable_prefix(_interpreter(limits), isolated=why is None)
        if problem:
            raise SandboxError(problem)
        layers.append(f"uid/gid {NOBODY} (nobody), no supplementary groups, no_new_privs")
    if limits.audit_hook:
        layers.append("audit hook: no processes, sockets or ctypes; writes only in the working "
                      "directory; no /proc/*/environ")
    return layers


def _interpreter(limits: SandboxLimits) -> str:
    return limits.interpreter or sys.executable


@functools.cache
def _unreadable_prefix(interpreter: str, isolated: bool) -> str | None:
    """Why uid 65534 could not import the interpreter's standard library, or None. With
    namespaces the home directory is replaced and the installation bound back, so only the
    folders outside home count."""
    try:
        prefix = subprocess.run([interpreter, "-I", "-S", "-c", "import sys; print(sys.base_prefix)"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the sandbox interpreter {interpreter} does not run: {exc}"
    home = os.path.realpath(os.path.expanduser("~"))
    path = Path(os.path.realpath(prefix))
    for folder in [*reversed(path.parents), path]:
        if isolated and (folder == Path(home) or Path(home) in folder.parents) and folder != path:
            continue
        if not folder.stat().st_mode & 0o001:
            return (f"the sandbox drops to uid {NOBODY}, which cannot enter {folder} on the way to "
                    f"{interpreter}'s standard library ({prefix}); set the sandbox's interpreter "
                    "to a Python installed where every user can read it (e.g. /usr/bin/python3)")
    return None


def _config(code: str, tests: str, limits: SandboxLimits, isolate: bool, workdir: str,
            marker_fd: int, marker: str) -> bytes:
    home = os.path.expanduser("~")
    return json.dumps({
        "code": code, "tests": tests, "marker": marker, "marker_fd": marker_fd,
        "isolate": isolate, "workdir": workdir, "home": home, "tmpfs_mb": limits.tmpfs_mb,
        "uid": NOBODY if os.geteuid() == 0 else None,
        "cpu_seconds": limits.cpu_seconds, "memory_bytes": limits.memory_mb << 20,
        "file_bytes": limits.output_kb << 10, "open_files": limits.open_files,
        "processes": limits.processes, "audit_hook": limits.audit_hook,
    }).encode()


def _env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}


def run_python_tests(code: str, tests: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` then ``tests`` (asserts) in one fresh sandboxed interpreter; passed when
    both ran to the end within the limits."""
    limits = limits or SandboxLimits()
    sandbox_layers(limits)  # raises when the required namespaces are missing
    isolate = _namespaces_work() is None
    with tempfile.TemporaryDirectory(prefix="tempering-sandbox-") as host:
        work = os.path.join(host, "work")
        os.mkdir(work, 0o700)
        if os.geteuid() == 0:
            os.chown(work, NOBODY, NOBODY)
        marker = secrets.token_hex(16)
        paths = {name: os.path.join(host, name) for name in ("in", "out", "err", "marker")}
        with open(paths["marker"], "wb") as mark:
            Path(paths["in"]).write_bytes(_config(code, tests, limits, isolate, work,
                                                  mark.fileno(), marker))
            cmd = [*(_namespace_prefix() + ["--"] if isolate else []),
                   _interpreter(limits), "-I", "-S", "-B", str(_BOOT)]
            with open(paths["in"], "rb") as stdin, open(paths["out"], "wb") as out, \
                    open(paths["err"], "wb") as err:
                start = time.monotonic()
                proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err, cwd=host,
                                        env=_env(work), pass_fds=(mark.fileno(),),
                                        start_new_session=True)
                rc, cpu, timed_out = _wait(proc, limits.wall_seconds)
                seconds = time.monotonic() - start
        marked = Path(paths["marker"]).read_bytes() == marker.encode()
        stdout, stderr = (_tail(paths[name], limits.output_kb) for name in ("out", "err"))
    out_of_cpu = cpu >= int(limits.cpu_seconds + 0.999) - 0.05
    return _verdict(rc, timed_out, out_of_cpu, marked, stdout, stderr, seconds)


def _wait(proc: subprocess.Popen[bytes], wall_seconds: float) -> tuple[int, float, bool]:
    """(exit code, CPU seconds of the process and its reaped children, timed out): waited
    for with ``wait4``, which also gives the CPU time that tells a CPU-limit kill apart."""
    deadline, pause = time.monotonic() + wall_seconds, 0.001
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, timed_out


def _tail(path: str, limit_kb: int) -> str:
    data = Path(path).read_bytes()[-(limit_kb << 10):]
    return data.decode("utf-8", "replace")


def _verdict(rc: int, timed_out: bool, out_of_cpu: bool, marked: bool, stdout: str,
             stderr: str, seconds: float) -> SandboxResult:
    def result(status: str, blocked: str | None = None) -> SandboxResult:
        return SandboxResult(status == "passed", status, rc, stdout, stderr, seconds, blocked)

    if rc == _SETUP_EXIT and "sandbox setup failed" in stderr:
        raise SandboxError(stderr.strip().splitlines()[-1])
    if timed_out:
        return result("timeout")
    if rc == _BLOCKED_EXIT and "sandbox: blocked " in stderr:
        return result("blocked", stderr.rsplit("sandbox: blocked ", 1)[1].split(" ", 1)[0])
    if rc == 0:
        return result("passed" if marked else "exited_early")
    if out_of_cpu:
        return result("cpu_time")
    if rc in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or "File too large" in stderr:
        return result("output_limit")
    if "MemoryError" in stderr:
        return result("memory")
    return result("failed")
