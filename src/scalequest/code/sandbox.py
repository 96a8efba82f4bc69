"""Run untrusted (model-written) Python programs, one process tree per program, contained.

`execute(program, timeout, memory_mb)` runs a program and returns an `Execution` with its `status`
("ok" when it ran to completion; else "error", "timeout", "memory", "output" or "killed"), `stdout`,
`stderr`, `returncode` and `seconds`. `execute_many` runs many in parallel. Nothing here imports more
than the standard library, and no model-written code ever runs in the calling process.

How a program is contained (Linux; `check_available()` says why not when it cannot be):

- `unshare` (util-linux) gives it new network, mount and PID namespaces, and, for an ordinary user, a
  user namespace in which it may set those up. No network: only a loopback interface that is down.
  PID namespace: it sees only its own processes, and when it ends, or is killed, every process it
  started is killed by the kernel (it is the namespace's init).
- A small trusted bootstrap (`_BOOTSTRAP`) then, inside the namespaces: mounts a size-limited tmpfs as
  the program's folder (its only writable place, gone with the namespace); hides the home folders of
  root and of the caller behind empty tmpfs (keys, tokens and caches live there), keeping only the
  interpreter reachable; remounts every other mount read-only; sets resource limits (address space,
  CPU seconds, file size = output size, processes, no core files); and drops every capability (and,
  when started as root, switches to an unprivileged uid of its own) before it starts the interpreter.
- The interpreter is this Python's base interpreter in isolated mode (`-I`: no environment variables,
  no user site-packages, no current folder on the path); the environment holds only PATH, HOME,
  TMPDIR and LANG, none of the caller's variables (API keys, tokens).
- A wall-clock timeout kills the whole tree; output beyond `max_output_bytes` is cut and stops it.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# Exit code and stderr marker of a bootstrap that could not set the sandbox up (not the program's fault).
_SETUP_FAILED = 125
_SETUP_MARK = "scalequest-sandbox-setup:"
# Seconds of CPU time beyond the timeout before the kernel stops the program (the wall clock usually
# stops it first; this catches a program whose children burn CPU in parallel).
_CPU_GRACE = 1
# Size of the program's writable folder, in MiB; counted in memory, so kept small.
FOLDER_MB = 64


class SandboxUnavailable(RuntimeError):
    """This machine cannot contain programs (no Linux namespaces, no `unshare`); the message says why."""


@dataclass(frozen=True)
class Execution:
    """How one program ran.

    status: "ok" (it ran to completion, exit code 0), "error" (it exited with another code or a signal),
        "timeout" (wall-clock or CPU limit), "memory" (it ran out of its address-space limit), "output"
        (it wrote more than the output limit) or "killed" (stopped by a signal nobody here sent, such as
        the kernel's OOM killer).
    stdout, stderr: what it wrote, decoded as UTF-8 with replacement, each cut at the output limit.
    returncode: its exit code (negative: the signal that ended it); None when we killed it.
    seconds: wall-clock time from start to end.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int | None
    seconds: float


# The trusted part that runs inside the new namespaces, before the program. It gets its job as JSON in
# argv[1] and ends by exec'ing setpriv, which drops privileges and execs the interpreter on the program.
_BOOTSTRAP = r"""
import ctypes, json, os, resource, sys

job = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 18, 1 << 21, 1 << 24
FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
         "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}


def fail(what):
    sys.stderr.write(job["mark"] + " " + what + "\n")
    sys.exit(job["setup_failed"])


def mount(source, target, fstype, flags, data=None):
    encode = lambda text: None if text is None else text.encode()
    if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def mounts():
    for line in open("/proc/self/mountinfo", encoding="utf-8"):
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")  # octal escapes such as \040 for a space
        yield point, fields[5].split(",")


if mount(None, "/", None, MS_REC | MS_PRIVATE):
    fail("cannot make the mounts private")
folder, interpreter_home = job["folder"], job["interpreter_home"]
if mount(interpreter_home, job["stage"], None, MS_BIND | MS_REC):
    fail("cannot bind " + interpreter_home)
for home in job["hide"]:
    if mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755"):
        fail("cannot hide " + home)
    if interpreter_home == home or interpreter_home.startswith(home.rstrip("/") + "/"):
        os.makedirs(interpreter_home, exist_ok=True)
        if mount(job["stage"], interpreter_home, None, MS_BIND | MS_REC):
            fail("cannot bind " + interpreter_home + " again")
size = "size=%dm,mode=777" % job["folder_mb"]
if mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, size):
    fail("cannot mount the program's folder")
with open(os.path.join(folder, "main.py"), "w", encoding="utf-8") as file:
    file.write(job["program"])
for point, options in mounts():
    if point == folder or point == "/proc" or point.startswith("/proc/"):
        continue  # /proc is the PID namespace's own, showing only the program's processes
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(FLAGS.get(option, 0) for option in options)
    problem = mount(None, point, None, flags)
    if problem and not point.startswith("/sys"):  # sysfs is read-only or root-owned anyway
        fail("cannot make " + point + " read-only (" + problem + ")")
limits = {
    resource.RLIMIT_AS: job["memory_bytes"],
    resource.RLIMIT_CPU: job["cpu_seconds"],
    resource.RLIMIT_FSIZE: job["max_output_bytes"],
    resource.RLIMIT_NPROC: job["max_processes"],
    resource.RLIMIT_CORE: 0,
}
for kind, value in limits.items():
    hard = value + 1 if kind == resource.RLIMIT_CPU else value
    resource.setrlimit(kind, (value, hard))
os.chdir(folder)
drop = ["--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
if job["uid"] is not None:
    drop = ["--reuid=%d" % job["uid"], "--regid=%d" % job["uid"], "--clear-groups", *drop]
try:
    os.execve(job["setpriv"], ["setpriv", *drop, "--", job["interpreter"], "-I", "main.py", *job["argv"]], job["env"])
except OSError as error:
    fail("cannot start setpriv: %s" % error)
"""


def _interpreter() -> tuple[str, str]:
    """(interpreter, the folder it lives in that must stay reachable): this Python's base interpreter.

    The base interpreter rather than a virtual environment's: programs get the standard library and
    nothing that was installed for this toolkit.
    """
    interpreter = Path(getattr(sys, "_base_executable", None) or sys.executable).resolve()
    home = Path(sys.base_prefix).resolve()
    if not interpreter.is_relative_to(home):
        home = interpreter.parent
    return str(interpreter), str(home)


def _homes(scratch: Path) -> list[str]:
    """Home folders to hide from programs: root's and the caller's, unless the scratch folder is inside."""
    homes = {Path("/root"), Path(os.path.expanduser("~")), Path(os.environ.get("HOME") or "/")}
    return sorted(
        str(home) for home in homes if home != Path("/") and home.is_dir() and not scratch.is_relative_to(home)
    )


@functools.cache
def _tools() -> tuple[str, str]:
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"the sandbox needs Linux namespaces; this is {sys.platform}")
    found = [shutil.which(tool, path=os.defpath + ":/usr/sbin:/sbin") for tool in ("unshare", "setpriv")]
    if None in found:
        raise SandboxUnavailable("the sandbox needs `unshare` and `setpriv` (util-linux): apt install util-linux")
    return found[0], found[1]


def _status(returncode: int | None, stderr: str, timed_out: bool, output_cut: bool) -> str:
    if timed_out or returncode in (-signal.SIGXCPU,):
        return "timeout"
    if output_cut or returncode == -signal.SIGXFSZ:
        return "output"
    if returncode == 0:
        return "ok"
    if returncode is not None and returncode > 0 and "MemoryError" in stderr[-2000:]:
        return "memory"
    if returncode == -signal.SIGKILL:
        return "killed"
    return "error"


def _read(path: Path, limit: int) -> tuple[str, bool]:
    with path.open("rb") as file:
        data = file.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) >= limit  # writes past it failed


def execute(
    program: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    *,
    stdin: str = "",
    argv: tuple[str, ...] = (),
    max_processes: int = 32,
    max_output_bytes: int = 1_000_000,
) -> Execution:
    """Run `program` (Python source) in the sandbox and return how it ran (see `Execution`).

    timeout: wall-clock seconds before the whole process tree is killed (status "timeout").
    memory_mb: address-space limit of each of its processes, in MiB.
    stdin: text fed to its standard input. argv: its command-line arguments.
    max_processes: processes (and threads) it may run at once. max_output_bytes: the most it may write
        to stdout, stderr or any file.
    Raises SandboxUnavailable when this machine cannot contain it (nothing is run then).
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if memory_mb < 16:
        raise ValueError(f"memory_mb must be >= 16, got {memory_mb}")
    unshare, setpriv = _tools()
    interpreter, interpreter_home = _interpreter()
    root = os.geteuid() == 0
    namespaces = ["--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if not root:  # an ordinary user gets the rights to set up the other namespaces in a user namespace
        namespaces = ["--user", "--map-root-user", *namespaces]
    with tempfile.TemporaryDirectory(prefix="scalequest-sandbox-") as scratch:
        scratch_path = Path(scratch)
        scratch_path.chmod(0o755)  # the unprivileged uid must reach the folder mounted below it
        (scratch_path / "folder").mkdir()
        (scratch_path / "stage").mkdir()
        job = {
            "program": program,
            "argv": list(argv),
            "folder": str(scratch_path / "folder"),
            "folder_mb": FOLDER_MB,
            "stage": str(scratch_path / "stage"),
            "interpreter": interpreter,
            "interpreter_home": interpreter_home,
            "hide": _homes(scratch_path.resolve()),
            "memory_bytes": memory_mb * 1024 * 1024,
            "cpu_seconds": int(timeout) + _CPU_GRACE,
            "max_output_bytes": max_output_bytes,
            "max_processes": max_processes,
            # As root, a uid of its own: its process count (RLIMIT_NPROC) is then its alone, and it owns
            # no file on the machine. An ordinary user's processes are counted per user namespace.
            "uid": random.randrange(1 << 20, 1 << 30) if root else None,
            "setpriv": setpriv,
            "env": {
                "PATH": "/usr/bin:/bin",
                "HOME": str(scratch_path / "folder"),
                "LANG": "C.UTF-8",
                "TMPDIR": str(scratch_path / "folder"),
            },
            "mark": _SETUP_MARK,
            "setup_failed": _SETUP_FAILED,
        }
        command = [unshare, *namespaces, "--", sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(job)]
        out_path, err_path = scratch_path / "stdout", scratch_path / "stderr"
        start = time.perf_counter()
        timed_out = False
        with out_path.open("wb") as out, err_path.open("wb") as err:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                env={"PATH": os.defpath, "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group, killed as a whole below
                close_fds=True,
            )
            try:
                process.communicate(stdin.encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
                process.wait()
        seconds = time.perf_counter() - start
        stdout, stdout_cut = _read(out_path, max_output_bytes)
        stderr, stderr_cut = _read(err_path, max_output_bytes)
    returncode = None if timed_out else process.returncode
    if returncode == _SETUP_FAILED and _SETUP_MARK in stderr:
        reason = stderr.split(_SETUP_MARK, 1)[1].strip().splitlines()[0]
        raise SandboxUnavailable(f"the sandbox could not be set up: {reason}")
    if returncode == 1 and stderr.startswith("unshare:"):
        raise SandboxUnavailable(f"the sandbox could not be set up: {stderr.strip().splitlines()[0]}")
    status = _status(returncode, stderr, timed_out, stdout_cut or stderr_cut)
    return Execution(status, stdout, stderr, returncode, seconds)


def _kill_group(process: subprocess.Popen) -> None:
    """Kill `unshare` and its process group; the kernel then kills the PID namespace with its init."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def execute_many(
    programs: list[str],
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    **limits,
) -> list[Execution]:
    """`execute` each program, `workers` at a time (default: the CPU count), in the programs' order."""
    if not programs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(programs)))
    check_available()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: execute(program, timeout, memory_mb, **limits), programs))


@functools.cache
def check_available() -> None:
    """Raise SandboxUnavailable (saying why) unless a trivial program runs in the sandbox; checked once."""
    result = execute("print('ok')", timeout=30)
    if result.status != "ok" or result.stdout.strip() != "ok":
        detail = (result.stderr.strip().splitlines() or [result.status])[-1]
        raise SandboxUnavailable(f"a trivial program did not run in the sandbox: {detail}")
