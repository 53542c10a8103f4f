"""sandbox.py -- run a model's program against a benchmark's tests, and let it touch nothing else.

  run_program(source, test, *, timeout=10.0) -> bool
      True when `source` followed by `test` (one Python file) exits with status 0 within `timeout` seconds
      of wall time; False on a failed test, an error, a timeout or any limit hit. Never raises.

What isolates the program, on every run:
  * a fresh temporary directory (its cwd and HOME, mode 700), removed afterwards;
  * `python -I -S -B`: no PYTHON* variables, no site-packages, no user site, no bytecode files; a scrubbed
    environment (PATH, HOME, LANG, OMP_NUM_THREADS=1; nothing of the caller's);
  * a session and process group of its own, SIGKILLed as a whole at the deadline;
  * limits: CPU seconds (timeout + 1), address space (MEMORY_BYTES), file size (FILE_BYTES: stdout and
    stderr go to one file in the directory, so more output than that kills the program), open files (64),
    core dumps (none); stdin is empty;
  * a guard at the top of the file that removes os.kill/killpg/system/fork/exec*/remove/unlink/rename,
    subprocess.Popen, shutil.rmtree/move/chown (as the benchmarks' own runners do) and the socket, ctypes
    and multiprocessing modules -- defence in depth, not a boundary (a program can reach posix or _socket);
  * when the caller is root (CI, containers), the boundaries that hold against a hostile program: a network
    namespace of its own with no interface up (no network, not even loopback) and a uid of its own with no
    account, no groups and at most MAX_PROCS processes -- so it cannot signal, read (/proc/<pid>/environ
    included) or write anything of anyone else's -- and, after the run, every process still holding that uid
    is killed (a fork bomb that left the process group goes too). The uid needs an interpreter it can
    start: a virtual environment under /root is out of its reach, so /usr/bin/python3 is used when this one
    is not (the programs need only the standard library); with none, the program runs as root.
What is not isolated: as a non-root user there is no uid switch and no network namespace, so only the guard
and the limits (processes counted against the caller's own) stand between the program and the caller's
files, processes and network; run untrusted code as root in a container or VM. World-writable directories
(/tmp) stay writable by the program's uid (files capped at FILE_BYTES; they are not cleaned up), and /proc
shows that other processes exist.

The launcher is a separate short program (LAUNCHER), started with start_new_session, that sets the limits,
unshares the network and drops to the uid before exec'ing the program: no preexec_fn, which is unsafe in a
process with threads (evaluate.py grades from threads). Tests: tests/test_sandbox.py.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MEMORY_BYTES = 2 << 30          # address space of the program (a Python process needs ~30 MB of it)
FILE_BYTES = 16 << 20           # largest file it may write
MAX_PROCS = 32                  # processes of its uid (root callers; otherwise counted on the caller's)
UID_RANGE = (1 << 20, 1 << 30)  # run uids are drawn from here: no account has them
WORK_ROOT = ""                  # where run directories go; "" = <tempdir>/infuser-sandbox (mode 711)

GUARD = """\
import os as _os, sys as _sys
for _n in ("kill", "killpg", "system", "popen", "fork", "forkpty", "execv", "execve", "execvp", "execvpe",
           "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "remove", "unlink",
           "rmdir", "removedirs", "rename", "renames", "replace", "putenv", "unsetenv", "chmod", "chown"):
    if hasattr(_os, _n):
        setattr(_os, _n, None)
import shutil as _sh, subprocess as _sp
_sp.Popen = _sh.rmtree = _sh.move = _sh.chown = None
for _m in ("socket", "ctypes", "multiprocessing"):
    _sys.modules[_m] = None
del _os, _sys, _n, _m, _sh, _sp
"""

# argv: uid (or -1), cpu seconds, memory bytes, file bytes, max procs (-1: no limit set), interpreter, program
LAUNCHER = """\
import ctypes, os, resource, sys
uid, cpu, mem, fsize, nproc = (int(x) for x in sys.argv[1:6])
if os.geteuid() == 0 and ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:   # CLONE_NEWNET
    sys.exit(97)
for lim, n in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize),
               (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (n, n))
if nproc >= 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.execv(sys.argv[6], [sys.argv[6], "-I", "-S", "-B", sys.argv[7]])
"""


def run_program(source: str, test: str, *, timeout: float = 10.0) -> bool:
    """Does `source` + `test` run to a clean exit within `timeout` seconds? (the module docstring says how
    it is isolated). False for anything else, including bad arguments; never raises."""
    try:
        return _run(str(source), str(test), float(timeout))
    except Exception:                    # an internal failure is a failed run, never an evaluation crash
        return False


def _run(source: str, test: str, timeout: float) -> bool:
    if not timeout > 0:
        return False
    python, own_uid = _interpreter()
    return _launch(GUARD + "\n" + source + "\n\n" + test + "\n", timeout, python,
                   _new_uid() if own_uid else -1) == 0


def _launch(program: str, timeout: float, python: str, uid: int) -> int | None:
    """Exit status of `program` run by `python` as `uid` (-1: as the caller), None past the deadline."""
    root = os.geteuid() == 0
    nproc = MAX_PROCS if uid >= 0 else _own_processes() + MAX_PROCS
    base = WORK_ROOT or os.path.join(tempfile.gettempdir(), "infuser-sandbox")
    os.makedirs(base, exist_ok=True)
    if root:
        os.chmod(base, 0o711)            # the uid may enter its own directory, not list the others
    work = tempfile.mkdtemp(prefix="infuser-run-", dir=base)
    try:
        path = os.path.join(work, "program.py")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(program)
        if uid >= 0:
            for p in (work, path):
                os.chown(p, uid, uid)
        os.chmod(work, 0o700)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        with open(os.path.join(work, "output"), "wb") as out:      # capped by FILE_BYTES: more is a failure
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", LAUNCHER, str(uid if root else -1),
                                     str(int(timeout) + 1), str(MEMORY_BYTES), str(FILE_BYTES), str(nproc), python,
                                     path], cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _kill_group(proc.pid)
            proc.wait()
            if uid >= 0:
                _kill_uid(uid)
        return code
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _new_uid() -> int:
    return secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0]


_INTERPRETER: tuple[str, bool] | None = None


def _interpreter() -> tuple[str, bool]:
    """(the Python that runs programs, whether they get a uid of their own). As root: the first of this
    interpreter, /usr/bin/python3 and /usr/local/bin/python3 that a uid with no account can start (a probe
    run, once per process: a virtual environment under /root is out of its reach). If none can: this
    interpreter, as root (network namespace and limits only). Not root: this interpreter, as the caller."""
    global _INTERPRETER
    if _INTERPRETER is None:
        _INTERPRETER = (sys.executable, False)
        if os.geteuid() == 0:
            for cand in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
                if os.path.isfile(cand) and _launch("pass", 10.0, cand, _new_uid()) == 0:
                    _INTERPRETER = (cand, True)
                    break
            else:
                print("warning: sandbox: no Python that an unprivileged uid can start (this one is out of its "
                      "reach, and there is no /usr/bin/python3): programs run as root, in a network namespace "
                      "and under limits only", file=sys.stderr)
    return _INTERPRETER


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`: kill(-1) sent as that uid reaches exactly its own processes."""
    for _ in range(5):
        if not any(_proc_uid(p) == uid for p in os.listdir("/proc") if p.isdigit()):
            return
        subprocess.run([sys.executable, "-I", "-S", "-c", f"import os, signal\nos.setgroups([])\nos.setgid({uid})"
                        f"\nos.setuid({uid})\nos.kill(-1, signal.SIGKILL)"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
        time.sleep(0.05)


def _proc_uid(pid: str) -> int | None:
    """The real uid of a live process (None for a zombie: dead, waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("State:") and line.split()[1] == "Z":
                    return None
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _own_processes() -> int:
    me = os.getuid()
    try:
        return sum(_proc_uid(p) == me for p in os.listdir("/proc") if p.isdigit())
    except OSError:
        return 256
