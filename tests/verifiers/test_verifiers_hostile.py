"""Hostile programs against the real code sandbox.

Each case must end with a failing verdict and a clear reason within its time limit, and leave the host
unaffected: no leftover processes, no file changed outside the sandbox (a sentinel tree, the temp root,
procmem's sources), the test process and an unrelated host process alive, and the secret held in the
host's environment never visible in the verdict or the program's output.

Cases that could hurt the host if isolation were missing run only under ``strong`` isolation (they
are skipped, with the reason, elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from procmem.core import Task, Verdict
from procmem.verifiers._sandbox_child import HIDDEN_PATH
from procmem.verifiers.code import CodeSpec, CodeVerifier
from procmem.verifiers.sandbox import MARKER_ENV, SandboxRun, isolation_support

SECRET_ENV = "PROCMEM_TEST_SECRET"
ESCAPE_MARK = "31337.25"  # the argument of a `sleep` that a hostile program tries to leave behind
TIMEOUT_S = 2.0
REPO = Path(__file__).resolve().parents[2]
SOURCES = [str(REPO / "verifiers" / name) for name in ("base.py", "code.py", "sandbox.py", "_sandbox_child.py")]
STRONG = isolation_support().level == "strong"
needs_strong = pytest.mark.skipif(not STRONG, reason=f"needs strong isolation, have: {isolation_support().describe()}")


@dataclass
class Host:
    root: Path
    sentinel: Path
    tmp_root: Path
    secret: str
    holder: subprocess.Popen[bytes]
    listener: socket.socket


def _snapshot(root: Path) -> dict[str, tuple[int, str, int]]:
    state: dict[str, tuple[int, str, int]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_file():  # a directory's mtime changes when the sandbox's temp dir comes and goes
            state[str(path.relative_to(root))] = (info.st_mode, hashlib.sha256(path.read_bytes()).hexdigest(),
                                                  info.st_mtime_ns)
        else:
            state[str(path.relative_to(root))] = (info.st_mode, "", 0)
    return state


def _hashes(paths: list[str]) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    secret = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(SECRET_ENV, secret)
    sentinel = tmp_path / "sentinel"
    (sentinel / "sub").mkdir(parents=True)
    (sentinel / "a.txt").write_text("alpha")
    (sentinel / "sub" / "b.txt").write_text("beta")
    tmp_root = tmp_path / "work"
    tmp_root.mkdir()
    (tmp_root / "keep.txt").write_text("keep")
    holder = subprocess.Popen(["sleep", "300"], env=dict(os.environ))  # a host process with the secret in its env
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield Host(tmp_path, sentinel, tmp_root, secret, holder, listener)
    finally:
        listener.close()
        holder.kill()
        holder.wait()


def _verifier(host: Host, *, timeout_s: float = TIMEOUT_S, memory_mb: int = 256) -> CodeVerifier:
    task = Task(id="hostile", prompt="Return 42.", verifier="code:solve",
                metadata={"tests": ["assert solve() == 42"], "io": [[[], 42]], "timeout_s": timeout_s,
                          "memory_mb": memory_mb})
    return CodeVerifier(CodeSpec.from_task(task), tmp_root=str(host.tmp_root))


def _program(host: Host, code: str) -> str:
    values = {"__SENTINEL__": str(host.sentinel), "__TMPROOT__": str(host.tmp_root), "__REPO__": str(REPO),
              "__TEST_PID__": str(os.getpid()), "__HOLDER_PID__": str(host.holder.pid),
              "__PORT__": str(host.listener.getsockname()[1]), "__SOURCES__": repr(SOURCES),
              "__ESCAPE__": ESCAPE_MARK}
    for key, value in values.items():
        code = code.replace(key, value)
    return code


def _leftovers(run_id: str) -> list[str]:
    """Live processes of the run (by its id in argv or environment) or of the escape attempt."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            state = Path(f"/proc/{name}/stat").read_bytes().rpartition(b")")[2].split()[0]
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if state in (b"Z", b"X"):
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            environ = b""
        if (run_id.encode() in cmdline.split(b"\0") or ESCAPE_MARK.encode() in cmdline
                or f"{MARKER_ENV}={run_id}".encode() in environ.split(b"\0")):
            found.append(f"{name}: {cmdline[:80]!r}")
    return found


def _attack(host: Host, code: str, *, timeout_s: float = TIMEOUT_S) -> tuple[Verdict, SandboxRun]:
    """Run a hostile program and check that the host is unaffected."""
    before = _snapshot(host.root)
    sources = _hashes(SOURCES)
    started = time.monotonic()
    verdict, run = _verifier(host, timeout_s=timeout_s).run(_program(host, code))
    elapsed = time.monotonic() - started
    assert run is not None
    assert not verdict.passed, verdict
    assert elapsed < timeout_s + 10, f"took {elapsed:.1f}s"
    assert _leftovers(run.run_id) == []
    assert _snapshot(host.root) == before  # sentinel tree intact; the temp working dir is gone
    assert _hashes(SOURCES) == sources
    assert host.holder.poll() is None, "an unrelated host process was killed"
    for text in (verdict.feedback, str(verdict.details), run.stdout, run.stderr):
        assert host.secret not in text
    return verdict, run


def _assert_reason(verdict: Verdict, *reasons: str) -> None:
    assert any(r in verdict.feedback for r in reasons), verdict.feedback


def test_infinite_loop_times_out(host: Host) -> None:
    verdict, _ = _attack(host, "def solve():\n    while True:\n        pass\n")
    _assert_reason(verdict, f"timed out after {TIMEOUT_S:g}s in test 1 of 2")


def test_infinite_loop_while_loading_times_out(host: Host) -> None:
    verdict, _ = _attack(host, "import os\n\nwhile True:\n    pass\n\ndef solve():\n    return 42\n")
    _assert_reason(verdict, "timed out after 2s while loading the program")


def test_fork_bomb_is_contained(host: Host) -> None:
    code = ("import os\n\ndef solve():\n    while True:\n        try:\n            os.fork()\n"
            "        except OSError:\n            pass\n")
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "timed out after")


def test_memory_bomb_hits_the_limit(host: Host) -> None:
    code = "def solve():\n    hog = []\n    while True:\n        hog.append(bytes(64 << 20))\n"
    verdict, _ = _attack(host, code, timeout_s=5)
    _assert_reason(verdict, "raised MemoryError", "killed by")


def test_memory_bomb_while_loading(host: Host) -> None:
    verdict, _ = _attack(host, "hog = bytearray(16 << 30)\n\ndef solve():\n    return 42\n")
    _assert_reason(verdict, "failed while loading: MemoryError")


def test_one_huge_file_hits_the_file_size_limit(host: Host) -> None:
    code = ("def solve():\n    with open('big.bin', 'wb') as f:\n        for _ in range(64):\n"
            "            f.write(b'x' * (1 << 20))\n    return 42\n")
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "File too large")


@needs_strong
def test_filling_the_disk_hits_the_private_tmpfs(host: Host) -> None:
    code = ("import os\n\ndef solve():\n    i = 0\n    while True:\n        with open('fill%d' % i, 'wb') as f:\n"
            "            for _ in range(8):\n                f.write(b'x' * (1 << 20))\n        i += 1\n")
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "No space left on device")


@needs_strong
def test_writing_outside_the_temp_dir_fails(host: Host) -> None:
    targets = ["/etc/procmem-evil", "/var/tmp/procmem-evil", "/dev/shm/procmem-evil", "/procmem-evil"]
    code = f"""
import os

def solve():
    wrote, errors = [], []
    paths = ['__SENTINEL__/evil.txt', '__SENTINEL__/a.txt', '__TMPROOT__/evil.txt', '__REPO__/evil.txt',
             '../procmem-evil', *{targets!r}]
    for path in paths:
        try:
            with open(path, 'a') as f:
                f.write('pwned')
            wrote.append(path)
        except OSError as e:
            errors.append(e.strerror)
    if wrote:
        return 42
    raise PermissionError('; '.join(sorted(set(errors))))
"""
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "raised PermissionError")
    _assert_reason(verdict, "Read-only file system")
    assert not [t for t in [*targets, str(REPO / "evil.txt")] if os.path.exists(t)]


def test_environment_secret_is_not_passed(host: Host) -> None:
    code = ("import os\n\ndef solve():\n    found = sorted(k for k in os.environ)\n    print(dict(os.environ))\n"
            "    return found\n")
    verdict, run = _attack(host, code)
    assert SECRET_ENV not in verdict.feedback and SECRET_ENV not in run.stdout
    _assert_reason(verdict, "returned ['HOME', 'LANG', 'LC_ALL', 'PATH', 'PROCMEM_SANDBOX_RUN', 'TMPDIR']")


@needs_strong
def test_secret_is_not_readable_from_host_processes(host: Host) -> None:
    code = f"""
import os

def solve():
    found = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/environ' % pid, 'rb') as f:
                    found += [x.decode() for x in f.read().split(b'\\0') if b'{SECRET_ENV}' in x]
            except OSError:
                pass
    print('found', found)
    return found
"""
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "returned []")


@needs_strong
def test_network_is_unreachable(host: Host) -> None:
    code = """
import socket

def solve():
    errors = []
    for address in [('127.0.0.1', __PORT__), ('1.1.1.1', 53), ('::1', __PORT__)]:
        try:
            conn = socket.create_connection(address, timeout=1)
            conn.sendall(b'hello')
            return 42
        except OSError as e:
            errors.append('%s: %s' % (address[0], e))
    try:
        socket.getaddrinfo('example.com', 80)
        return 42
    except OSError as e:
        errors.append('dns: %s' % e)
    raise ConnectionError('; '.join(errors))
"""
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "raised ConnectionError")
    _assert_reason(verdict, "unreachable")
    host.listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        host.listener.accept()  # nobody connected


@needs_strong
def test_killing_the_parent_and_others_fails(host: Host) -> None:
    code = """
import os, signal

def solve():
    for pid in (os.getppid(), 1, __TEST_PID__, __HOLDER_PID__):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    return 41
"""
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "solve() returned 41")  # the supervisor lived on to judge


def test_printing_a_gigabyte_is_cut_off(host: Host) -> None:
    code = ("import sys\n\ndef solve():\n    chunk = 'x' * (1 << 20)\n    for _ in range(1024):\n"
            "        sys.stdout.write(chunk)\n        sys.stderr.write(chunk)\n    return 42\n")
    verdict, run = _attack(host, code)
    _assert_reason(verdict, "printed more than")
    assert len(run.stdout) < 64 << 10


@needs_strong
def test_deleting_files_in_the_parent_directory_fails(host: Host) -> None:
    code = """
import os, shutil

def solve():
    deleted, errors = 0, []
    for folder in ('..', '__TMPROOT__', '__SENTINEL__', '__SENTINEL__/sub'):
        try:
            names = os.listdir(folder)
        except OSError as e:
            errors.append(e.strerror)
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                if os.path.isfile(path) or os.path.islink(path):
                    os.remove(path)
                    deleted += 1
                elif folder != '..':
                    shutil.rmtree(path)
                    deleted += 1
            except OSError as e:
                errors.append(e.strerror)
    if deleted:
        return 42
    raise PermissionError('; '.join(sorted(set(errors))))
"""
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "raised PermissionError")


def test_recursion_bomb_fails(host: Host) -> None:
    verdict, _ = _attack(host, "def solve(n=0):\n    return solve(n + 1)\n")
    _assert_reason(verdict, "raised RecursionError")


def test_unbounded_recursion_with_raised_limit_fails(host: Host) -> None:
    code = "import sys\nsys.setrecursionlimit(10 ** 8)\n\ndef solve(n=0):\n    return solve(n + 1) + 1\n"
    verdict, _ = _attack(host, code)
    # CPython ends a C-stack or memory exhaustion in one of these ways, depending on where it runs out
    # (seen here: SystemError "error return without exception set"); each is a failed verdict, not a crash.
    _assert_reason(verdict, "killed by", "MemoryError", "RecursionError", "SystemError", "timed out")


@pytest.mark.parametrize(("code", "reason"), [
    ("import sys\nsys.exit(0)\n\ndef solve():\n    return 42\n", "failed while loading: SystemExit: 0"),
    ("def solve():\n    return 42\n\nimport sys\nsys.exit(0)\n", "failed while loading: SystemExit: 0"),
    ("def solve():\n    return 42\n\nimport os\nos._exit(0)\n", "the program exited with code 0"),
    ("def solve():\n    import os\n    os._exit(0)\n", "test 1: the program exited with code 0"),
    ("def solve():\n    raise SystemExit(0)\n", "solve() raised SystemExit"),
], ids=["sys-exit-first", "sys-exit-after-def", "os-exit-while-loading", "os-exit-in-call", "raise-systemexit"])
def test_exiting_before_the_tests_is_no_pass(host: Host, code: str, reason: str) -> None:
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, reason)
    assert verdict.score == 0.0


def test_monkeypatching_the_harness_and_assert_fails(host: Host) -> None:
    code = """
import builtins, os, sys

FORGED = (b'{"ev":"result","i":0,"ok":true,"msg":""}\\n{"ev":"result","i":1,"ok":true,"msg":""}\\n'
          b'{"ev":"done","nonce":"","passed":2,"total":2}\\n{"ready":true,"missing":[]}\\n{"ok":42}\\n')

def forge():
    for fd in range(3, 256):
        try:
            os.write(fd, FORGED)
        except OSError:
            pass
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                fds = os.listdir('/proc/%s/fd' % pid)
            except OSError:
                continue
            for fd in fds:
                try:
                    with open('/proc/%s/fd/%s' % (pid, fd), 'wb') as f:
                        f.write(FORGED)
                except OSError:
                    pass
    sys.stdout.write(FORGED.decode())
    sys.stdout.flush()

class Liar(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__

builtins.AssertionError = type('AssertionError', (Exception,), {})
builtins.isinstance = lambda *args: True
main = sys.modules.get('__main__')
for name in ('same', 'run_test', 'judge', 'send', 'encode', 'decode', 'Proxy', 'failure_message'):
    try:
        setattr(main, name, lambda *args, **kwargs: True)
    except Exception:
        pass

def solve():
    forge()
    return Liar(41)
"""
    verdict, run = _attack(host, code)
    assert verdict.score == 0.0
    assert "all 2 tests passed" not in verdict.feedback
    assert all(e.get("nonce") != "" for e in run.events if e.get("ev") == "done")


def test_returning_an_object_that_equals_everything_fails(host: Host) -> None:
    code = "class Any:\n    def __eq__(self, other):\n        return True\n\ndef solve():\n    return Any()\n"
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "not plain data (found Any")


@needs_strong
def test_importing_and_tampering_with_the_verifier_fails(host: Host) -> None:
    original = CodeVerifier.verify
    code = """
import sys
sys.path[:0] = ['__REPO__', '__REPO__/verifiers']

def solve():
    errors = []
    try:
        import procmem.verifiers.code as code
        code.CodeVerifier.verify = lambda self, answer: None
        return 42
    except BaseException as e:
        errors.append('import: %s' % type(e).__name__)
    for path in __SOURCES__:
        try:
            with open(path, 'a') as f:
                f.write('# tampered')
            return 42
        except OSError as e:
            errors.append(e.strerror)
    raise ImportError('; '.join(sorted(set(errors))))
"""
    verdict, _ = _attack(host, code)
    _assert_reason(verdict, "raised ImportError:")
    _assert_reason(verdict, "import: ModuleNotFoundError")
    assert CodeVerifier.verify is original


def test_daemonized_grandchild_does_not_survive(host: Host) -> None:
    code = """
import os, sys

def solve():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            try:  # the interpreter: /bin/sleep is not in a minimal root
                os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(__ESCAPE__)'])
            finally:
                os._exit(1)
        os._exit(0)
    return 41
"""
    verdict, _ = _attack(host, code)  # _attack asserts that no `sleep 31337.25` is left
    _assert_reason(verdict, "solve() returned 41")


def test_hostile_runs_do_not_disturb_parallel_honest_runs(host: Host) -> None:
    bombs = [
        "import os\n\ndef solve():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n"
        "            pass\n",
        "def solve():\n    hog = []\n    while True:\n        hog.append(bytes(64 << 20))\n",
        "def solve():\n    while True:\n        pass\n",
    ]
    honest = "def solve():\n    return 42\n"
    answers = [*bombs, *[honest] * 9]
    verifier = _verifier(host)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(verifier.run, answers))
    for answer, (verdict, run) in zip(answers, results, strict=True):
        assert verdict.passed == (answer == honest), verdict
        assert run is not None and _leftovers(run.run_id) == []
    assert host.holder.poll() is None


# --- the minimal root: what the program can see -----------------------------------------------------------

REPORT = "REPORT "  # the line on which a program below prints what it found (its output reaches the test)
HOST_ONLY = {"home", "root", "etc", "var", "run", "srv", "mnt", "media", "boot", "sys", "opt", "work", "bin", "sbin"}


def _report(run: SandboxRun) -> dict:
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith(REPORT)]
    assert lines, run.stdout[-500:] + run.stderr[-500:]
    return json.loads(lines[-1][len(REPORT):])


@needs_strong
def test_walking_the_root_finds_only_the_interpreter_tree(host: Host) -> None:
    """The program's `/` holds exactly the interpreter, its libraries, /dev's three devices, /proc and /tmp."""
    root = isolation_support().root
    assert root is not None
    seen = [*root["binds"], *(link for link, _ in root["links"])]
    code = f"""
import json, os, stat

def solve():
    allowed = {seen!r}
    outside, files, kinds = [], 0, {{}}
    for folder, dirs, names in os.walk('/'):
        if folder == '/proc':
            dirs[:] = []
            continue
        for name in dirs + names:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            files += 1
            inside = any(path == a or path.startswith(a + '/') or a.startswith(path + '/') for a in allowed)
            if not inside and path not in ('/dev', '/proc', '/tmp', '/dev/null', '/dev/zero', '/dev/urandom'):
                outside.append(path)
            if folder == '/dev':
                kinds[path] = 'char' if stat.S_ISCHR(mode) else 'other'
    print('{REPORT}' + json.dumps({{'top': sorted(os.listdir('/')), 'outside': outside[:20], 'files': files,
                                    'dev': kinds, 'tmp': os.listdir('/tmp'), 'cwd': os.getcwd()}}))
    return files
"""
    verdict, run = _attack(host, code, timeout_s=20)
    found = _report(run)
    assert found["top"] == root["top"]  # the exact set of top-level entries
    assert set(found["top"]) >= {"dev", "proc", "tmp"}
    interpreter_top = Path(isolation_support().python).parts[1]
    assert not (set(found["top"]) - {interpreter_top}) & HOST_ONLY, found["top"]
    assert found["outside"] == []
    assert found["files"] > 100  # the walk did see the standard library
    assert found["dev"] == {"/dev/null": "char", "/dev/urandom": "char", "/dev/zero": "char"}
    assert found["tmp"] == [] and found["cwd"] == "/tmp"
    assert verdict.details["root"] == "minimal" and verdict.details["filesystem"].startswith("minimal root")


@needs_strong
def test_host_files_cannot_be_read(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/passwd, /etc/hostname, the repository, PROCMEM_HOME and a file in the host's /home: none opens.
    (Nor does the host's name show, where the sandbox has a UTS namespace.)"""
    marker = "procmem-host-secret-" + secrets.token_hex(8)
    home = host.root / "procmem-home"
    (home / "memory").mkdir(parents=True)
    (home / "memory" / "notes.txt").write_text(marker)
    monkeypatch.setenv("PROCMEM_HOME", str(home))
    targets = ["/etc/passwd", "/etc/hostname", str(REPO / "pyproject.toml"), str(REPO / "verifiers" / "code.py"),
               str(home / "memory" / "notes.txt"), str(home)]
    user_dir = None
    if os.access("/home", os.W_OK):
        user_dir = Path(tempfile.mkdtemp(prefix="procmem-test-user-", dir="/home"))
        user_dir.chmod(0o755)
        (user_dir / "secret.txt").write_text(marker)
        (user_dir / "secret.txt").chmod(0o644)
        targets += [str(user_dir / "secret.txt"), "/home"]
    try:
        readable = [t for t in targets if os.path.exists(t) and t != "/etc/hostname"]
        assert len(readable) >= len(targets) - 1  # the host itself can read them (the test can fail)
        code = f"""
import json, os

def solve():
    opened, errors = [], set()
    for path in {targets!r}:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path) as f:
                    f.read()
            opened.append(path)
        except OSError as e:
            errors.add(e.strerror)
    print('{REPORT}' + json.dumps({{'opened': opened, 'errors': sorted(errors), 'hostname': os.uname().nodename}}))
    return len(opened)
"""
        verdict, run = _attack(host, code)
        found = _report(run)
        hostname = "sandbox" if "uts" in isolation_support().namespaces else socket.gethostname()
        assert found == {"opened": [], "errors": ["No such file or directory"], "hostname": hostname}
        _assert_reason(verdict, "solve() returned 0")
        assert marker not in run.stdout + run.stderr + verdict.feedback
    finally:
        if user_dir is not None:
            shutil.rmtree(user_dir)


@needs_strong
def test_proc_shows_only_the_sandboxs_own_processes(host: Host) -> None:
    code = f"""
import json, os

def solve():
    mine = open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2].decode()  # the run id
    pids = [p for p in os.listdir('/proc') if p.isdigit()]
    foreign = []
    for pid in pids:
        try:
            cmdline = open('/proc/%s/cmdline' % pid, 'rb').read().split(b'\\0')
        except OSError as e:
            foreign.append('%s: %s' % (pid, e.strerror))
            continue
        if mine.encode() not in cmdline:
            foreign.append(repr(cmdline[:3]))
    escapes = []
    for path in ('/proc/1/root/etc', '/proc/1/cwd', '/proc/1/environ', '/proc/%s/root/etc' % os.getppid()):
        try:
            os.listdir(path) if not path.endswith('environ') else open(path).read()
            escapes.append(path)
        except OSError:
            pass
    print('{REPORT}' + json.dumps({{'pids': len(pids), 'foreign': foreign, 'escapes': escapes, 'mine': mine}}))
    return len(pids)
"""
    _, run = _attack(host, code)
    found = _report(run)
    assert found["mine"] == run.run_id
    assert found["foreign"] == [] and found["escapes"] == []
    assert 1 <= found["pids"] <= 2  # the worker, and the supervisor where it runs under the same uid


def test_feedback_never_quotes_a_path_outside_the_sandbox(host: Host) -> None:
    """The candidate's exception text keeps paths inside the sandbox's tree (its /tmp) and loses others."""
    code = """
def solve():
    try:
        open('/home/alice/notes.txt').read()
    except OSError as e:
        raise OSError(str(e) + ' and /tmp/mine.txt and __REPO__/verifiers')
"""
    verdict, _ = _attack(host, code)
    private_tmp = "mount" in isolation_support().namespaces  # else /tmp is the host's
    mine = "/tmp/mine.txt" if private_tmp else HIDDEN_PATH
    _assert_reason(verdict, f"raised OSError: [Errno 2] No such file or directory: '{HIDDEN_PATH}' and {mine} "
                            f"and {HIDDEN_PATH}")
    assert "/home/alice" not in verdict.feedback and str(REPO) not in verdict.feedback


def test_host_is_checked_by_these_helpers(host: Host) -> None:
    """The checks above can fail: a changed sentinel and a live marked process are both seen."""
    before = _snapshot(host.root)
    (host.sentinel / "a.txt").write_text("changed")
    assert _snapshot(host.root) != before
    run_id = "0123456789abcdef"
    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", run_id])
    try:
        time.sleep(0.1)
        assert _leftovers(run_id)
    finally:
        probe.kill()
        probe.wait()
