"""Run untrusted Python (a model's program) in an isolated child process.

The host side of the code verifier's sandbox. One run:

1. creates a fresh temp working directory (removed afterwards) and a result pipe;
2. starts ``unshare`` (util-linux) with new network, pid and mount namespaces (plus a user namespace
   when not root) and, inside it, the trusted supervisor from :mod:`procmem.verifiers._sandbox_child`
   under ``python -I -S -B`` with a scrubbed environment (PATH, LANG, HOME/TMPDIR and a run marker only)
   in a new session. The configuration travels on stdin, never in argv or the environment;
3. the supervisor mounts a private size-capped tmpfs on ``/tmp`` (the working directory), hides
   procmem's own sources and data (``PROCMEM_HOME``, the home and current directories) and ``/run``
   (host daemons' sockets) under empty tmpfs mounts, remounts everything else read-only, and starts the
   untrusted worker with rlimits (CPU time, address space, file size, processes, open files, no core
   files) and without privileges: as root the worker and the supervisor each get a fresh unused uid,
   otherwise no capabilities, and ``no_new_privs`` either way. The worker reports that it holds no
   capability before it is given the program; the supervisor then reports ``hello`` and the program's
   time limit starts. An alarm ends an orphaned sandbox (host process gone) shortly after the limit;
4. the host reads stdout and stderr with a cap (more than ``max_output_bytes`` ends the run) and the
   result pipe until the supervisor reports ``done`` or the wall-clock timeout hits, then kills the
   whole process group (before reaping its leader, so the group id cannot be reused), waits until no
   member is alive, sweeps for leftovers (by uid, and by the run id when there is no pid namespace) and
   removes the temp directory.

The pass/fail decision is made from the supervisor's events only (a per-run nonce marks its ``hello``
and ``done``); nothing the program prints or exits with counts.

Isolation levels (:func:`isolation_support`):

* ``strong``: network, pid and mount namespaces, read-only filesystem, unprivileged worker;
* ``partial``: some namespaces (e.g. only the network one), or root without an interpreter that an
  unprivileged uid can run;
* ``weak``: no namespaces at all (``unshare`` missing or denied, e.g. user namespaces disabled).
  Processes, rlimits, the scrubbed environment and the temp directory still apply, but the program can
  reach the network and write wherever its uid may. The verdict says so.

``PROCMEM_SANDBOX`` chooses the policy: ``auto`` (default: the strongest available), ``strong`` (refuse
to run with anything weaker) or ``weak`` (no namespaces; for debugging).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procmem.core import Home, ProcmemError

__all__ = [
    "ISOLATION_ENV",
    "MARKER_ENV",
    "IsolationSupport",
    "SandboxLimits",
    "SandboxRun",
    "default_hidden_paths",
    "isolation_support",
    "run_sandboxed",
]

ISOLATION_ENV = "PROCMEM_SANDBOX"
"""Sandbox policy: ``auto``, ``strong`` or ``weak``."""

MARKER_ENV = "PROCMEM_SANDBOX_RUN"
"""Set in every sandboxed process's environment to the run's id (used to find leftovers)."""

_LOG = logging.getLogger(__name__)
_CHILD = Path(__file__).with_name("_sandbox_child.py")
_STARTUP_S = 10.0  # most time for the sandbox to start; the program's time limit counts from then
_DRAIN_S = 1.0  # how long to wait for the sandbox to exit after it reported done
_MAX_RESULT_BYTES = 4 << 20
_SYSTEM_DIRS = frozenset(["/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media",
                          "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
                          "/var"])


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    max_procs: int = 32
    max_file_mb: int = 16
    tmp_mb: int = 64
    max_output_bytes: int = 1 << 20
    keep_output_bytes: int = 4096

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600], got {self.timeout_s}")
        if min(self.memory_mb, self.max_procs, self.max_file_mb, self.tmp_mb, self.max_output_bytes) < 1:
            raise ValueError("sandbox limits must be positive")


@dataclass(frozen=True)
class IsolationSupport:
    """What isolation this machine offers, found once per process by :func:`isolation_support`."""

    level: str
    unshare: tuple[str, ...]
    namespaces: tuple[str, ...]
    python: str
    drop_uid: bool
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"namespaces: {','.join(self.namespaces) or 'none'}"]
        if os.geteuid() == 0:
            parts.append("fresh uid" if self.drop_uid else "uid 0 without capabilities")
        parts.extend(self.notes)
        return "; ".join(parts)


@dataclass
class SandboxRun:
    """What one run produced. ``events`` come from the supervisor only (the result pipe)."""

    events: list[dict[str, Any]]
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    output_exceeded: bool
    elapsed_s: float
    isolation: dict[str, Any] = field(default_factory=dict)
    leftovers_killed: int = 0
    run_id: str = ""

    @property
    def done(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("ev") == "done"), None)

    @property
    def running_test(self) -> int | None:
        """The index of the test that had started but not finished when the run ended."""
        started = [e["i"] for e in self.events if e.get("ev") == "start"]
        finished = {e["i"] for e in self.events if e.get("ev") == "result"}
        open_ = [i for i in started if i not in finished]
        return open_[-1] if open_ else None


# ---------------------------------------------------------------------------------------------------------
# What the machine supports


_PROBE_LOCK = threading.Lock()
_PROBED: dict[str, IsolationSupport] = {}
_WARNED: set[str] = set()


def isolation_support(mode: str | None = None) -> IsolationSupport:
    """The isolation this process will use (probed once per mode, thread-safe).

    ``mode`` defaults to ``$PROCMEM_SANDBOX`` or ``auto``. In ``strong`` mode an unavailable strong
    sandbox is a :class:`ProcmemError`.
    """
    mode = (mode or os.environ.get(ISOLATION_ENV) or "auto").strip().lower()
    if mode not in ("auto", "strong", "weak"):
        raise ProcmemError(f"unknown sandbox mode {mode!r}", where=ISOLATION_ENV, fix="use auto, strong or weak")
    with _PROBE_LOCK:
        support = _PROBED.get(mode)
        if support is None:
            support = _probe(force_weak=mode == "weak")
            _PROBED[mode] = support
            if support.level != "strong" and mode not in _WARNED:
                _WARNED.add(mode)
                _LOG.warning("code sandbox runs with %s isolation (%s)", support.level, support.describe())
    if mode == "strong" and support.level != "strong":
        raise ProcmemError(f"strong sandbox isolation is unavailable ({support.describe()})", where=ISOLATION_ENV,
                           fix="install util-linux `unshare` and allow user namespaces, run as root, "
                               "or set PROCMEM_SANDBOX=auto to accept weaker isolation")
    return support


def _probe(*, force_weak: bool) -> IsolationSupport:
    root = os.geteuid() == 0
    notes: list[str] = []
    python, drop_uid = _pick_python(root, notes)
    if force_weak:
        return IsolationSupport("weak", (), (), python, drop_uid, (f"forced by {ISOLATION_ENV}=weak",))
    unshare = shutil.which("unshare") or ("/usr/bin/unshare" if os.path.exists("/usr/bin/unshare") else None)
    if unshare is None:
        notes.append("no `unshare` command (util-linux): no network, pid or mount isolation")
        return IsolationSupport("weak", (), (), python, drop_uid, tuple(notes))
    user = [] if root else ["--map-root-user"]
    full = ["--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]
    tries = [(user + full, ("net", "pid", "mount")), ([*user, "--net"], ("net",))]
    for flags, names in tries:
        error = _try_run([unshare, *flags, "--", python, "-I", "-S", "-B", "-c", "print('ok')"])
        if error is None:
            namespaces = ("user", *names) if not root else names
            strong = "mount" in names and (drop_uid or not root)
            if "mount" not in names:
                notes.append("no pid or mount namespace: processes and files are protected by rlimits and uid only")
            return IsolationSupport("strong" if strong else "partial", (unshare, *flags), namespaces, python,
                                    drop_uid, tuple(notes))
        notes.append(f"`unshare {' '.join(flags)}` failed: {error}")
    return IsolationSupport("weak", (), (), python, drop_uid, tuple(notes))


def _pick_python(root: bool, notes: list[str]) -> tuple[str, bool]:
    """The interpreter for the sandbox, and whether it can run under a fresh unprivileged uid."""
    own = os.path.realpath(sys.executable)
    if not root:
        return own, False
    uid = _fresh_uids()[0]
    seen: list[str] = []
    for candidate in (own, os.path.realpath(getattr(sys, "_base_executable", "") or own),
                      "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        path = os.path.realpath(candidate) if candidate else ""
        if not path or path in seen or not os.path.isfile(path):
            continue
        seen.append(path)
        code = "import ctypes, json, resource, sys; assert sys.version_info >= (3, 10); print('ok')"
        if _try_run([path, "-I", "-S", "-B", "-c", code], user=uid, group=uid, extra_groups=[]) is None:
            return path, True
    notes.append("no Python interpreter that an unprivileged uid can run: the program runs as uid 0 "
                 "without capabilities")
    return own, False


def _try_run(argv: list[str], **kwargs: Any) -> str | None:
    """None if ``argv`` prints ok; else the reason."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, cwd="/",
                              env=_base_env("/", "probe"), check=False, **kwargs)
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    if done.returncode == 0 and done.stdout.strip() == b"ok":
        return None
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


def _fresh_uids() -> tuple[int, int]:
    """Two consecutive uids (supervisor, worker) that no account and (almost surely) no process uses."""
    import pwd

    rng = secrets.SystemRandom()
    while True:
        base = rng.randrange(1_000_000_000, 2_000_000_000, 2)
        try:
            pwd.getpwuid(base)
            pwd.getpwuid(base + 1)
        except KeyError:
            return base, base + 1


def _base_env(home: str, run_id: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home,
            "TMPDIR": home, MARKER_ENV: run_id}


def default_hidden_paths(python: str) -> list[str]:
    """Directories the program must not see: procmem's sources and data, the home and current dirs, /run."""
    package_dirs = [Path(__file__).resolve().parent]
    top = getattr(sys.modules.get("procmem"), "__file__", None)
    if top:
        package_dirs.append(Path(top).resolve().parent)
    roots = {str(p.parent) for p in package_dirs}
    candidates = [r for r in roots if Path(r, "pyproject.toml").is_file()] or [str(p) for p in package_dirs]
    candidates.append(str(Home.resolve().root))
    candidates.append(os.path.expanduser("~"))
    with contextlib.suppress(OSError):
        candidates.append(os.getcwd())
    keep = [os.path.realpath(python), *_interpreter_dirs(python)]
    hidden: list[str] = []
    for raw in candidates:
        path = os.path.realpath(raw)
        if path not in hidden and path not in _SYSTEM_DIRS and os.path.isdir(path) and not _holds(path, keep):
            hidden.append(path)
    if os.path.isdir("/run") and not _holds("/run", keep):
        hidden.append("/run")  # host daemons' sockets (a read-only mount does not stop connect())
    return hidden


def _holds(folder: str, paths: Sequence[str]) -> bool:
    return any(p == folder or p.startswith(folder.rstrip("/") + "/") for p in paths)


def _interpreter_dirs(python: str) -> list[str]:
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths = sysconfig.get_paths()
        return [os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths]
    return [os.path.realpath(os.path.join(os.path.dirname(python), "..", "lib"))]


# ---------------------------------------------------------------------------------------------------------
# One run


def run_sandboxed(payload: Mapping[str, Any], limits: SandboxLimits, *, mode: str | None = None,
                  hide: Sequence[str] | None = None, tmp_root: str | None = None) -> SandboxRun:
    """Run the supervisor on ``payload`` (what the tests need) in a fresh sandbox; never raises on a
    hostile program. ``hide`` defaults to :func:`default_hidden_paths`; ``tmp_root`` is where the temp
    working directory is created (default: the system temp dir)."""
    support = isolation_support(mode)
    run_id, nonce = secrets.token_hex(8), secrets.token_hex(16)
    uids = _fresh_uids() if support.drop_uid else None
    workdir = tempfile.mkdtemp(prefix="procmem-sbx-", dir=tmp_root)
    started = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    run: SandboxRun | None = None
    result_r, result_w = os.pipe()
    try:
        if uids is not None:
            os.chown(workdir, uids[1], uids[1])
        mountns = "mount" in support.namespaces
        source = _child_source()
        env = _base_env("/tmp" if mountns else workdir, run_id)
        box = {
            "result_fd": result_w, "nonce": nonce, "run_id": run_id, "mountns": mountns,
            "uids": list(uids) if uids else None, "drop_caps": uids is None, "tmp_mb": limits.tmp_mb,
            "workdir": workdir, "python": support.python, "env": env, "src": source,
            "worker_limits": _worker_limits(limits), "supervisor_limits": _supervisor_limits(limits),
            "hide": list(default_hidden_paths(support.python) if hide is None else hide),
            "deadline_s": limits.timeout_s + _STARTUP_S + _DRAIN_S,
        }
        config = json.dumps({**payload, "sandbox": box}).encode()
        argv = [*support.unshare, "--"] if support.unshare else []
        argv += [support.python, "-I", "-S", "-B", "-c", source, "supervise", run_id]
        with tempfile.TemporaryFile() as config_file:
            config_file.write(config)
            config_file.seek(0)
            proc = subprocess.Popen(argv, stdin=config_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(result_w,), close_fds=True, start_new_session=True, env=env,
                                    cwd=workdir)
        os.close(result_w)
        result_w = -1
        run = _collect(proc, result_r, limits, nonce)
    finally:
        if result_w >= 0:
            os.close(result_w)
        os.close(result_r)
        cut_short = run is None or run.timed_out or run.output_exceeded
        returncode = None if proc is None else _stop(proc, wait=not cut_short)
        leftovers = _sweep(uids, run_id, pid_namespace="pid" in support.namespaces)
        _remove_tree(workdir)
    assert run is not None
    run.returncode = returncode
    run.leftovers_killed = leftovers
    run.run_id = run_id
    run.elapsed_s = time.monotonic() - started
    run.isolation = _isolation_facts(support, run, uids is not None)
    return run


def _child_source() -> str:
    return _CHILD.read_text()


def _worker_limits(limits: SandboxLimits) -> dict[str, list[int]]:
    cpu = int(limits.timeout_s) + 1
    memory = limits.memory_mb << 20
    return {"RLIMIT_CPU": [cpu, cpu + 1], "RLIMIT_AS": [memory, memory], "RLIMIT_FSIZE": [limits.max_file_mb << 20] * 2,
            "RLIMIT_NPROC": [limits.max_procs] * 2, "RLIMIT_NOFILE": [256, 256], "RLIMIT_CORE": [0, 0]}


def _supervisor_limits(limits: SandboxLimits) -> dict[str, list[int]]:
    cpu = int(limits.timeout_s) + 2
    memory = max(1024, limits.memory_mb * 2) << 20
    return {"RLIMIT_CPU": [cpu, cpu + 1], "RLIMIT_AS": [memory, memory], "RLIMIT_FSIZE": [limits.max_file_mb << 20] * 2,
            "RLIMIT_CORE": [0, 0]}


class _Capture:
    """Keeps the first and the last ``keep`` bytes of a stream."""

    def __init__(self, keep: int) -> None:
        self.keep, self.head, self.tail, self.total = keep, bytearray(), bytearray(), 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail = (self.tail + data)[-self.keep:]

    def text(self) -> str:
        gap = self.total - len(self.head) - len(self.tail)
        middle = f"\n[... {gap} bytes left out ...]\n" if gap > 0 else ""
        return self.head.decode(errors="replace") + middle + self.tail.decode(errors="replace")


def _collect(proc: subprocess.Popen[bytes], result_fd: int, limits: SandboxLimits, nonce: str) -> SandboxRun:
    assert proc.stdout is not None and proc.stderr is not None
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", result_fd: "result"}
    captures = {"stdout": _Capture(limits.keep_output_bytes), "stderr": _Capture(limits.keep_output_bytes)}
    events: list[dict[str, Any]] = []
    pending = bytearray()
    start = time.monotonic()
    deadline = start + limits.timeout_s + _STARTUP_S
    timed_out = exceeded = False
    with selectors.DefaultSelector() as selector:
        for fd in names:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and not exceeded:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = not any(e.get("ev") == "done" for e in events)
                break
            for key, _ in selector.select(left):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(key.fd)
                elif names[key.fd] == "result":
                    seen = len(events)
                    finished = _take_events(pending, data, events, nonce)
                    if any(e["ev"] == "hello" for e in events[seen:]):
                        deadline = time.monotonic() + limits.timeout_s  # the sandbox is up: the clock starts
                    if finished:
                        deadline = min(deadline, time.monotonic() + _DRAIN_S)
                else:
                    captures[names[key.fd]].add(data)
                    exceeded = captures["stdout"].total + captures["stderr"].total > limits.max_output_bytes
    return SandboxRun(events=events, stdout=captures["stdout"].text(), stderr=captures["stderr"].text(),
                      returncode=None, timed_out=timed_out, output_exceeded=exceeded,
                      elapsed_s=time.monotonic() - start)


def _take_events(pending: bytearray, data: bytes, events: list[dict[str, Any]], nonce: str) -> bool:
    """Add complete event lines to ``events``; True when the supervisor's ``done`` arrived."""
    if len(pending) + len(data) > _MAX_RESULT_BYTES:
        return False
    pending += data
    finished = False
    while b"\n" in pending:
        line, _, rest = bytes(pending).partition(b"\n")
        pending[:] = rest
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("ev") not in ("hello", "loaded", "start", "result", "done"):
            continue
        if event["ev"] in ("hello", "done") and event.get("nonce") != nonce:
            continue
        events.append(event)
        finished = finished or event["ev"] == "done"
    return finished


def _stop(proc: subprocess.Popen[bytes], *, wait: bool) -> int | None:
    """Kill the run's process group and reap its leader (after up to 0.5 s for it to exit, if ``wait``).

    The group is killed before the leader is reaped: until then its pid, which is the group id,
    cannot be reused by another process.
    """
    end = time.monotonic() + (0.5 if wait else 0.0)
    while time.monotonic() < end:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        except ChildProcessError:
            break
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    returncode = proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    end = time.monotonic() + 5.0
    while time.monotonic() < end and _group_alive(proc.pid):  # e.g. a supervisor killed along with unshare
        time.sleep(0.01)
    return returncode


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for a slow init do not count)."""
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _sweep(uids: tuple[int, int] | None, run_id: str, *, pid_namespace: bool) -> int:
    """Kill processes of this run that are still alive: by uid, and by marker without a pid namespace."""
    if uids is None and pid_namespace:
        return 0
    needle = f"{MARKER_ENV}={run_id}".encode()
    killed = 0
    for _ in range(100):
        found = [pid for pid in _pids() if _belongs(pid, uids, None if pid_namespace else needle)]
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.02)
    return killed


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _belongs(pid: int, uids: tuple[int, int] | None, needle: bytes | None) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            status = dict(line.split(":", 1) for line in fh if ":" in line)
        if status.get("State", "").strip().startswith("Z"):
            return False
        if uids is not None and int(status.get("Uid", "-1").split()[0]) in uids:
            return True
        if needle is not None and pid != os.getpid():
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if needle.split(b"=", 1)[1] in fh.read().split(b"\0"):
                    return True
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return needle in fh.read().split(b"\0")
    except (OSError, ValueError):
        return False
    return False


def _remove_tree(path: str) -> None:
    def retry(func: Any, target: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
            func(target)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def _isolation_facts(support: IsolationSupport, run: SandboxRun, dropped_uid: bool) -> dict[str, Any]:
    hello = next((e for e in run.events if e.get("ev") == "hello"), None)
    setup = hello.get("setup", {}) if hello else {}
    level = support.level
    failures = setup.get("readonly_failures") or []
    if level == "strong" and (failures or setup.get("capabilities") not in (None, "none")):
        level = "partial"
    facts: dict[str, Any] = {
        "isolation": level,
        "namespaces": ",".join(support.namespaces) or "none",
        "network": "none" if "net" in support.namespaces else "host",
        "filesystem": ("read-only, private /tmp" if setup.get("mount") == "private" else "host"),
        "user": "fresh uid" if dropped_uid else ("uid 0" if os.geteuid() == 0 else "same uid"),
    }
    if setup.get("capabilities"):
        facts["capabilities"] = setup["capabilities"]
    if setup.get("worker") not in (None, "started"):
        facts["sandbox_error"] = str(setup["worker"])[:300]
    if failures:
        facts["readonly_failures"] = ", ".join(map(str, failures))[:300]
    if support.notes:
        facts["notes"] = "; ".join(support.notes)[:500]
    if run.leftovers_killed:
        facts["leftovers_killed"] = run.leftovers_killed
    return facts
