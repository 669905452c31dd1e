"""The python_tests sandbox: each escape the issue names is contained and scored as a failure,
once with every layer and once without the audit hook (the operating-system layers alone)."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from tempering.generate import sandbox
from tempering.generate.sandbox import SandboxError, SandboxLimits, run_python_tests

NAMESPACES = sandbox._namespaces_work()
pytestmark = pytest.mark.skipif(NAMESPACES is not None, reason=f"no namespaces: {NAMESPACES}")
FAST = dict(cpu_seconds=1, wall_seconds=4, memory_mb=256)


@pytest.fixture(params=[True, False], ids=["all-layers", "os-layers-only"])
def limits(request):
    return SandboxLimits(audit_hook=request.param, **FAST)


def _boot_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"_sandbox_boot.py" in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found


def test_a_correct_solution_passes_and_a_wrong_one_fails(limits):
    code = "import json, collections\n\ndef add(a, b):\n    return a + b\n"
    ok = run_python_tests(code, "assert add(2, 3) == 5\nprint('ran')", limits)
    assert (ok.passed, ok.status, ok.returncode, ok.stdout.strip()) == (True, "passed", 0, "ran")
    bad = run_python_tests(code, "assert add(2, 3) == 6", limits)
    assert (bad.passed, bad.status) == (False, "failed") and "AssertionError" in bad.stderr


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)",
                                       "raise SystemExit"])
def test_exiting_before_the_tests_is_not_a_pass(limits, exit_call):
    result = run_python_tests(exit_call, "assert False", limits)
    assert (result.passed, result.status) == (False, "exited_early")


def test_an_infinite_loop_is_stopped_by_the_cpu_limit(limits):
    result = run_python_tests("while True:\n    pass\n", "", limits)
    assert (result.passed, result.status) == (False, "cpu_time")
    assert result.seconds < FAST["wall_seconds"]


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit_with_its_children():
    code = ("import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)\n")
    result = run_python_tests(code, "", SandboxLimits(audit_hook=False, **FAST))
    assert (result.passed, result.status) == (False, "timeout")
    assert FAST["wall_seconds"] <= result.seconds < FAST["wall_seconds"] + 3
    assert _boot_processes() == []


def test_a_fork_bomb_is_contained(limits):
    code = "import os\nwhile True:\n    os.fork()\n"
    result = run_python_tests(code, "", limits)
    assert not result.passed
    assert result.status == ("blocked" if limits.audit_hook else "failed"), result.stderr
    assert _boot_processes() == []


def test_memory_beyond_the_limit_fails(limits):
    result = run_python_tests("x = bytearray(1 << 30)\n", "", limits)
    assert (result.passed, result.status) == (False, "memory")


def test_writes_outside_the_working_directory_do_not_reach_the_machine(limits, tmp_path):
    open_dir = tmp_path / "world-writable"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    name = f"escaped-{uuid.uuid4().hex}"
    targets = [open_dir / name, Path("/var/tmp") / name, Path.cwd() / name]
    code = "".join(f"open({str(t)!r}, 'w').write('x')\n" for t in targets)
    for target in targets:  # each write alone, so a later one is not skipped by an earlier error
        result = run_python_tests(f"open({str(target)!r}, 'w').write('x')\n", "", limits)
        assert not result.passed and not target.exists(), (target, result)
    assert not run_python_tests(code, "", limits).passed
    inside = run_python_tests("open('notes.txt', 'w').write('ok')\n",
                              "assert open('notes.txt').read() == 'ok'", limits)
    assert inside.passed, inside.stderr


def test_no_network_connection_reaches_a_listener_on_loopback(limits):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(6)
    port = listener.getsockname()[1]
    accepted: list[bytes] = []

    def serve():
        try:
            conn, _ = listener.accept()
            accepted.append(conn.recv(100))
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'escaped')\n")
    try:
        result = run_python_tests(code, "", limits)
    finally:
        thread.join(8)
        listener.close()
    assert not result.passed and accepted == []
    assert result.status == "blocked" if limits.audit_hook else "Network is unreachable" in (
        result.stderr)


def test_environment_secrets_are_not_readable(limits, monkeypatch):
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("TEMPERING_TEST_SECRET", secret)
    code = (
        "import os\nseen = ' '.join(os.environ.values())\n"
        "for path in [f'/proc/{os.getppid()}/environ', '/proc/self/environ', '/proc/1/environ',\n"
        "             *(f'/proc/{p}/environ' for p in os.listdir('/proc') if p.isdigit())]:\n"
        "    try:\n"
        "        seen += open(path, 'rb').read().decode('latin-1')\n"
        "    except OSError:\n"
        "        pass\n"
        "print(seen)\n")
    result = run_python_tests(code, f"assert {secret!r} in seen", limits)
    assert not result.passed
    assert secret not in result.stdout and secret not in result.stderr


def test_the_home_directory_is_hidden(tmp_path):
    home = Path(os.path.expanduser("~"))
    code = f"import os\nprint(sorted(os.listdir({str(home)!r})))\n"
    result = run_python_tests(code, "", SandboxLimits(**FAST))
    assert result.passed, result.stderr
    visible = eval(result.stdout)  # noqa: S307 - our own program's printed list
    assert len(visible) <= 1 and set(visible) <= {p.name for p in home.iterdir()}


def test_missing_namespaces_are_an_error_unless_waived(monkeypatch):
    monkeypatch.setattr(sandbox, "_namespaces_work", lambda: "unshare(1) is not available")
    with pytest.raises(SandboxError, match="require_namespaces: false"):
        run_python_tests("pass", "", SandboxLimits(**FAST))
    waived = SandboxLimits(require_namespaces=False, interpreter="/usr/bin/python3", **FAST)
    if not os.path.exists(waived.interpreter):
        pytest.skip("no /usr/bin/python3 here")
    layers = sandbox.sandbox_layers(waived)
    assert not any(layer.startswith("namespaces") for layer in layers)
    ok = run_python_tests("import json\nx = json.loads('[1]')", "assert x == [1]", waived)
    assert ok.passed, ok.stderr
    outside = Path("/var/tmp") / f"escaped-{uuid.uuid4().hex}"
    blocked = run_python_tests(f"open({str(outside)!r}, 'w')", "", waived)
    assert (blocked.status, outside.exists()) == ("blocked", False)


def test_bad_limits_name_the_field():
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)


def test_a_score_stage_on_a_machine_without_namespaces_stops_with_one_line(
        monkeypatch, tiny_recipe, tmp_path, capsys):
    import yaml

    from tempering.cli import main

    monkeypatch.setattr(sandbox, "_namespaces_work", lambda: "unshare(1) is not available")
    recipe = {**tiny_recipe, "stages": [{"kind": "generate"}, {"kind": "score"}],
              "generate": {"prompts": tiny_recipe["data"]["validation"], "max_prompts": 2,
                           "sampling": {"max_new_tokens": 4}},
              "score": {"scorers": ["python_tests"]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tempering: error: the python_tests sandbox needs Linux namespaces")
    assert "require_namespaces: false" in err
