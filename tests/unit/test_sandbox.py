"""The sandbox (scalequest.code.sandbox) against hostile programs: each is contained, harms neither the host
nor the run, and leaves no process behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scalequest.code import execute, execute_many


pytestmark = pytest.mark.usefixtures("sandbox")


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def assert_no_process_left(marker: str) -> None:
    deadline = time.monotonic() + 2
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


def test_a_program_runs_and_reports() -> None:
    result = execute("import sys\nprint('hello', input())\nprint('oops', file=sys.stderr)", stdin="there\n")
    assert (result.status, result.returncode) == ("ok", 0)
    assert result.stdout == "hello there\n" and result.stderr == "oops\n"
    failing = execute("raise SystemExit(3)")
    assert (failing.status, failing.returncode) == ("error", 3)


def test_endless_loop_times_out() -> None:
    start = time.perf_counter()
    result = execute("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout" and result.returncode is None
    assert time.perf_counter() - start < 5


def test_fork_bomb_of_sleepers_is_capped_and_killed() -> None:
    marker = "9137.25"
    program = textwrap.dedent(
        f"""
        import os, subprocess, sys
        children = 0
        try:
            while True:
                subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
                children += 1
        except OSError:
            pass
        print(children, flush=True)
        """
    )
    result = execute(program, timeout=5.0, max_processes=16)
    assert result.status == "ok", result.stderr
    assert 0 < int(result.stdout) < 16  # the process limit stopped it
    assert_no_process_left(marker)


def test_sleeping_children_are_killed_at_timeout() -> None:
    marker = "8123.5"
    program = f"import os, time\nfor _ in range(4):\n    os.system('sleep {marker} &')\ntime.sleep(60)\n"
    assert execute(program, timeout=1.0).status == "timeout"
    assert_no_process_left(marker)


def test_large_allocation_is_refused() -> None:
    result = execute("x = bytearray(8 * 1024**3)\n", memory_mb=256)
    assert result.status == "memory"
    assert "MemoryError" in result.stderr


def test_writing_outside_its_folder_fails(tmp_path: Path) -> None:
    target = tmp_path / "written-by-the-program"
    program = textwrap.dedent(
        f"""
        import os
        open("mine.txt", "w").write("its own folder is writable")
        assert open("mine.txt").read()
        for path in [{str(target)!r}, "/tmp/scalequest-escape", "/root/escape", "/etc/escape"]:
            try:
                open(path, "w").write("x")
                print("WROTE", path)
            except OSError as error:
                print("refused", error.errno)
        """
    )
    result = execute(program)
    assert result.status == "ok", result.stderr
    assert "WROTE" not in result.stdout and result.stdout.count("refused") == 4
    assert not target.exists() and not Path("/tmp/scalequest-escape").exists()
    assert not Path("/etc/escape").exists() and not Path("/root/escape").exists()


def test_environment_carries_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-programs")
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_programs")
    program = (
        "import os, subprocess\nprint(dict(os.environ))\nprint(subprocess.run(['env'], capture_output=True).stdout)"
    )
    result = execute(program)
    assert result.status == "ok", result.stderr
    assert "sk-not-for-programs" not in result.stdout and "hf_not_for_programs" not in result.stdout
    assert "OPENAI_API_KEY" not in result.stdout and "HF_TOKEN" not in result.stdout


def test_home_folders_are_hidden() -> None:
    home = Path.home()
    if not home.is_dir() or not any(home.iterdir()):
        pytest.skip("no home folder with files to hide")
    result = execute(f"import os\nprint(os.listdir({str(home)!r}))")
    assert result.status == "ok", result.stderr
    listed = eval(result.stdout)  # a list of names printed by the program
    # Only the way to the interpreter stays, when the interpreter lives in the home folder.
    interpreter_home = Path(sys.base_prefix).resolve()
    kept = {interpreter_home.relative_to(home).parts[0]} if interpreter_home.is_relative_to(home) else set()
    assert set(listed) <= kept


def test_no_network_even_to_a_local_port() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    try:
        result = execute(program)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    assert result.status == "error" and "connected" not in result.stdout
    assert "unreachable" in result.stderr or "refused" in result.stderr


def test_output_is_capped() -> None:
    result = execute("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", max_output_bytes=100_000)
    assert result.status == "output"
    assert len(result.stdout) == 100_000


def test_it_cannot_see_or_signal_host_processes() -> None:
    result = execute(
        f"import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\nos.kill({os.getpid()}, 9)"
    )
    assert result.status == "error"  # the pid of this process does not exist in its namespace
    assert "ProcessLookupError" in result.stderr
    assert len(eval(result.stdout)) <= 2


def test_execute_many_keeps_order_and_runs_in_parallel() -> None:
    programs = [f"import time\ntime.sleep(0.5)\nprint({index})" for index in range(4)]
    start = time.perf_counter()
    results = execute_many(programs, timeout=10, workers=4)
    assert [result.stdout for result in results] == [f"{index}\n" for index in range(4)]
    assert time.perf_counter() - start < 4 * 0.5 + 1.0


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        execute("pass", timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        execute("pass", memory_mb=1)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become a user")
def test_it_works_as_an_ordinary_user() -> None:
    # Load the sandbox module (standard library only) into the system Python run as uid 1000.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 an ordinary user can run")
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="scalequest-user-test-"))  # not under pytest's root-only folder
    module = tmp_path / "sandbox.py"
    shutil.copy(Path(sys.modules["scalequest.code.sandbox"].__file__), module)
    tmp_path.chmod(0o755)
    module.chmod(0o644)
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("sandbox", {str(module)!r})
        sandbox = importlib.util.module_from_spec(spec)
        sys.modules["sandbox"] = sandbox
        spec.loader.exec_module(sandbox)
        print(sandbox.execute("import os; print(os.getuid())").status)
        print(sandbox.execute("open('/tmp/user-escape', 'w')").status)
        print(sandbox.execute("import socket; socket.create_connection(('127.0.0.1', 1))").status)
        print(sandbox.execute("while True: pass", timeout=1).status)
        """
    )
    completed = subprocess.run(
        ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", python, "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        timeout=60,
    )
    if "SandboxUnavailable" in completed.stderr:
        pytest.skip(f"no user namespaces for ordinary users here: {completed.stderr.strip().splitlines()[-1]}")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["ok", "error", "error", "timeout"]
    assert not Path("/tmp/user-escape").exists()
    shutil.rmtree(tmp_path)
