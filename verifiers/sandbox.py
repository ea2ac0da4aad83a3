"""Run untrusted Python (a model's program) in an isolated child process.

The host side of the code verifier's sandbox. One run:

1. creates a fresh temp working directory (removed afterwards) and a result pipe;
2. starts ``unshare`` (util-linux) with new network, pid and mount namespaces (plus a user namespace
   when not root) and, inside it, the trusted supervisor from :mod:`procmem.verifiers._sandbox_child`
   under ``python -I -S -B`` with a scrubbed environment (PATH, LANG, HOME/TMPDIR and a run marker only)
   in a new session. The configuration (a :class:`Message`) travels on stdin, never in argv or the
   environment;
3. the supervisor mounts a private size-capped tmpfs on ``/tmp``, remounts everything else read-only
   and starts the untrusted worker. The worker enters a minimal root of its own (:class:`RootPlan`): a
   new mount namespace whose ``/`` is a fresh read-only tmpfs holding read-only bind mounts of the
   interpreter, its standard library and the shared libraries they load (each at its host path, with
   the symlinks that lead there), a private size-capped ``/tmp`` (its working directory), its own
   ``/proc`` (only the sandbox's processes) and ``/dev/null``, ``/dev/zero`` and ``/dev/urandom``,
   entered with ``pivot_root``; the host's filesystem is detached from it. Where no minimal root can be
   built, the worker shares the supervisor's view instead, with procmem's own sources and data
   (``PROCMEM_HOME``, the home and current directories) and ``/run`` (host daemons' sockets) covered by
   empty tmpfs mounts. The worker runs with rlimits (CPU time, address space, file size, processes,
   open files, no core files) and without privileges: as root the worker and the supervisor each get a
   fresh unused uid, otherwise no capabilities, and ``no_new_privs`` either way. The worker reports
   that it holds no capability (and what its ``/`` holds) before it is given the program; the
   supervisor then reports ``hello`` and the program's time limit starts. An alarm ends an orphaned
   sandbox (host process gone) shortly after the limit;
4. the host reads stdout and stderr with a cap (more than ``max_output_bytes`` ends the run) and the
   result pipe until the supervisor reports ``done`` or the wall-clock timeout hits, then kills the
   whole process group (before reaping its leader, so the group id cannot be reused), waits until no
   member is alive, sweeps for leftovers (by uid, and by the run id when there is no pid namespace) and
   removes the temp directory.

The pass/fail decision is made from the supervisor's events only (a per-run nonce marks its ``hello``
and ``done``); nothing the program prints or exits with counts. The candidate's exception texts reach
the feedback with every absolute path outside the sandbox's tree replaced.

Isolation levels (:func:`isolation_support`):

* ``strong``: network, pid and mount namespaces, the minimal root, unprivileged worker;
* ``partial``: some namespaces (e.g. only the network one), a mount namespace where the minimal root
  cannot be built (the worker then sees the host's filesystem read-only, minus the hidden paths), or
  root without an interpreter that an unprivileged uid can run;
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

from procmem.core import Home, ProcmemError
from procmem.verifiers._sandbox_child import DEVICES, scrub_paths

__all__ = [
    "ISOLATION_ENV",
    "MARKER_ENV",
    "Box",
    "IsolationSupport",
    "Job",
    "JobTest",
    "Message",
    "RootPlan",
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
_HOSTNAME = "sandbox"  # the host's name is not the program's business
_SELF_CHECK_S = 20.0  # time limit of the run that checks the minimal root once per process
_SYSTEM_DIRS = frozenset(["/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media",
                          "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
                          "/var"])


# ---------------------------------------------------------------------------------------------------------
# The configuration message the supervisor reads on stdin (JSON), as both sides see it.


class JobTest(TypedDict, total=False):
    """One test: an assert snippet (``code``), or positional ``args`` and the ``expected`` value."""

    code: str
    args: list[Any]
    expected: Any


class Job(TypedDict):
    """What the tests need: the candidate program, its entry point, the tests and their setup code."""

    code: str
    entry_point: str
    tests: list[JobTest]
    setup: str


class RootPlan(TypedDict):
    """The worker's minimal root: host paths bound read-only at the same paths, and symlinks."""

    binds: list[str]  # real files and directories (the interpreter, its import directories, libraries)
    links: list[list[str]]  # [path, target]: the symlinks on the way to them, recreated as they are
    top: list[str]  # the entries of its "/", sorted (the worker reports what it sees; they must match)


class Box(TypedDict):
    """How the supervisor builds the sandbox and starts the worker."""

    result_fd: int  # the pipe for the supervisor's events (the worker never holds it)
    nonce: str  # marks the supervisor's hello and done events
    run_id: str  # in every sandboxed process's argv and environment (MARKER_ENV), to find leftovers
    mountns: bool  # whether the supervisor has a mount namespace of its own
    uids: list[int] | None  # [supervisor, worker]: fresh uids to drop to (as root), else None
    drop_caps: bool  # without fresh uids: drop every capability instead
    tmp_mb: int  # size of the private /tmp
    workdir: str  # the host temp directory (the working directory without a mount namespace)
    python: str  # the interpreter that runs the worker
    env: dict[str, str]  # the worker's whole environment
    src: str  # this module's source, run by the worker with ``-c``
    worker_limits: dict[str, list[int]]  # rlimit name (RLIMIT_...) -> [soft, hard]
    supervisor_limits: dict[str, list[int]]
    hide: list[str]  # directories covered by an empty tmpfs when there is no minimal root
    root: RootPlan | None  # the worker's minimal root, or None to share the supervisor's view
    tree: list[str]  # the paths the worker can see (see _sandbox_child.in_tree); others are scrubbed
    secret: list[str]  # host directories under /tmp (a checkout there): scrubbed though /tmp is in the tree
    hostname: str | None  # set in the sandbox's own UTS namespace (None: there is none)
    deadline_s: float  # the supervisor's own alarm: it exits after this long whatever happens


class Message(TypedDict):
    """The whole message: the job and the box."""

    job: Job
    sandbox: Box


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
    root: RootPlan | None = None
    """The worker's minimal root; None: it sees the supervisor's view (the host's files, read-only)."""
    tree: tuple[str, ...] = ("/tmp", "/proc", *DEVICES)
    """The paths the worker can see, as far as feedback may quote them."""

    def describe(self) -> str:
        parts = [f"namespaces: {','.join(self.namespaces) or 'none'}"]
        if self.root is not None:
            parts.append(f"minimal root ({len(self.root['binds'])} read-only binds)")
        elif "mount" in self.namespaces:
            parts.append("host filesystem, read-only")
        if os.geteuid() == 0:
            parts.append("fresh uid" if self.drop_uid else "uid 0 without capabilities")
        parts.extend(self.notes)
        return "; ".join(parts)

    def without_root(self) -> IsolationSupport:
        """The same isolation with the worker on the host's read-only filesystem instead of a minimal root
        (the level before minimal roots existed: ``partial``, or weaker; for comparisons)."""
        if self.root is None:
            return self
        return replace(self, root=None, level="partial" if self.level == "strong" else self.level,
                       notes=(*self.notes, "no minimal root (asked for)"))


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
    tree: tuple[str, ...] = ()
    secret: tuple[str, ...] = ()

    def scrub(self, text: str) -> str:
        """``text`` with every absolute path the program could not see replaced."""
        return scrub_paths(text, list(self.tree), list(self.secret))

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
    weak = IsolationSupport("weak", (), (), python, drop_uid)
    if force_weak:
        return replace(weak, notes=(f"forced by {ISOLATION_ENV}=weak",))
    unshare = shutil.which("unshare") or ("/usr/bin/unshare" if os.path.exists("/usr/bin/unshare") else None)
    if unshare is None:
        notes.append("no `unshare` command (util-linux): no network, pid or mount isolation")
        return replace(weak, notes=tuple(notes))
    user = [] if root else ["--map-root-user"]
    full = ["--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]
    tries = [([*user, *full, "--uts", "--ipc"], ("net", "pid", "mount", "uts", "ipc")),
             (user + full, ("net", "pid", "mount")), ([*user, "--net"], ("net",))]
    for flags, names in tries:
        out, error = _capture([unshare, *flags, "--", python, "-I", "-S", "-B", "-c", _child_source(), "probe"])
        found = _last_json(out)
        if found is None:
            notes.append(f"`unshare {' '.join(flags)}` failed: {error or 'no probe report'}")
            continue
        namespaces = ("user", *names) if not root else names
        strong = "mount" in names and (drop_uid or not root)
        if "mount" not in names:
            notes.append("no pid or mount namespace: processes and files are protected by rlimits and uid only")
        plan = _root_plan(python, found)
        support = IsolationSupport("strong" if strong else "partial", (unshare, *flags), namespaces, python,
                                   drop_uid, tuple(notes), tree=_tree(plan))
        return _with_root(support, plan, found.get("modules", [])) if "mount" in names else support
    return replace(weak, notes=tuple(notes))


def _with_root(support: IsolationSupport, plan: RootPlan, modules: Sequence[str]) -> IsolationSupport:
    """``support`` with the minimal root ``plan`` if a sandboxed run in it can import every extension
    module the interpreter imports outside (tried again with the loader's cache, /etc/ld.so.cache, if
    not); else ``support`` at ``partial`` level at most, saying why."""
    plans = [plan]
    cache = "/etc/ld.so.cache"
    if os.path.isfile(cache) and cache not in plan["binds"]:
        plans.append(_root_plan(support.python, {"mapped": [*plan["binds"], cache]}, links=plan["links"]))
    code = (f"def check():\n    missing = []\n    for name in {list(modules)!r}:\n        try:\n"
            "            __import__(name)\n        except BaseException:\n            missing.append(name)\n"
            "    return missing\n")
    job = Job(code=code, entry_point="check", tests=[{"args": [], "expected": []}], setup="")
    reasons = []
    for candidate in plans:
        trial = replace(support, root=candidate, tree=_tree(candidate))
        run = _run(trial, job, SandboxLimits(timeout_s=_SELF_CHECK_S), hide=[], tmp_root=None)
        done = run.done
        if done is not None and done.get("passed") == 1 and run.isolation.get("root") == "minimal":
            return trial
        reasons.append(_root_failure(run))
    reason = reasons[0]  # why the plan itself failed (the retry with the loader's cache is a guess)
    return replace(support, level="partial" if support.level == "strong" else support.level,
                   notes=(*support.notes, f"no minimal root ({reason}): the program sees the host's files, "
                                          "read-only, minus procmem's own"))


def _root_failure(run: SandboxRun) -> str:
    hello = next((e for e in run.events if e.get("ev") == "hello"), None)
    worker = (hello or {}).get("setup", {}).get("worker")
    if worker not in (None, "started"):
        return str(worker)[:300]
    result = next((e for e in run.events if e.get("ev") == "result"), None)
    if result is not None:
        return str(result.get("msg"))[:300]
    tail = " ".join(run.stderr.strip().splitlines()[-1:])[-200:]
    return f"the check run ended without results ({tail or 'no output'})"


def _root_plan(python: str, found: Mapping[str, Any], links: Sequence[Sequence[str]] = ()) -> RootPlan:
    """The minimal root for ``python`` from its probe (see ``_sandbox_child.probe``): every path it needs
    bound at its real path, and the symlinks met on the way to each recreated as they are."""
    met: dict[str, str] = {link: target for link, target in links}
    reals: set[str] = set()
    for path in [python, *found.get("path", []), *found.get("loaded", []), *found.get("mapped", [])]:
        on_the_way: dict[str, str] = {}
        real = _trace(path, on_the_way) if os.path.isabs(path) else "/"
        if real not in _SYSTEM_DIRS and not _holds_any(("/proc", "/sys", "/dev"), real) and (
                os.path.isfile(real) or os.path.isdir(real)):
            reals.add(real)
            met.update(on_the_way)
    dirs = [r for r in reals if os.path.isdir(r)]
    binds = sorted(r for r in reals if not any(r != d and _holds(d, [r]) for d in dirs))
    kept = sorted([link, target] for link, target in met.items() if not any(_holds(d, [link]) for d in dirs))
    top = {path.split("/")[1] for path in [*binds, *(link for link, _ in kept)]} | {"dev", "proc", "tmp"}
    return RootPlan(binds=binds, links=kept, top=sorted(top))


def _trace(path: str, links: dict[str, str]) -> str:
    """The real path that ``path`` leads to; each symlink met on the way is added to ``links``."""
    done, rest, hops = "/", [p for p in path.split("/") if p], 0
    while rest:
        part = rest.pop(0)
        if part in (".", ".."):
            done = os.path.dirname(done) if part == ".." else done
            continue
        here = os.path.join(done, part)
        if not os.path.islink(here):
            done = here
            continue
        hops += 1
        if hops > 40:
            raise ProcmemError(f"too many symlinks on the way to {path}", where="the sandbox's minimal root",
                               fix="point the interpreter's paths at real files")
        target = os.readlink(here)
        links[here] = target
        rest[:0] = [p for p in target.split("/") if p]
        if target.startswith("/"):
            done = "/"
    return done


def _holds_any(folders: Sequence[str], path: str) -> bool:
    return any(_holds(folder, [path]) for folder in folders)


def _tree(plan: RootPlan) -> tuple[str, ...]:
    """What the worker in ``plan``'s root can see, as paths (for scrubbing feedback)."""
    return (*plan["binds"], *(link for link, _ in plan["links"]), "/tmp", "/proc", *DEVICES)


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
        out, _ = _capture([path, "-I", "-S", "-B", "-c", code], user=uid, group=uid, extra_groups=[])
        if out is not None and out.strip() == "ok":
            return path, True
    notes.append("no Python interpreter that an unprivileged uid can run: the program runs as uid 0 "
                 "without capabilities")
    return own, False


def _capture(argv: list[str], **kwargs: Any) -> tuple[str | None, str | None]:
    """(stdout, None) if ``argv`` succeeds; else (None, the reason)."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, cwd="/",
                              env=_base_env("/", "probe"), check=False, **kwargs)
    except (OSError, subprocess.SubprocessError) as err:
        return None, str(err)
    if done.returncode == 0:
        return done.stdout.decode(errors="replace"), None
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return None, lines[-1] if lines else f"exit code {done.returncode}"


def _last_json(out: str | None) -> dict[str, Any] | None:
    """The JSON object on the last line of ``out``, if there is one."""
    lines = (out or "").strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


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


def run_sandboxed(job: Job, limits: SandboxLimits, *, mode: str | None = None,
                  support: IsolationSupport | None = None, hide: Sequence[str] | None = None,
                  tmp_root: str | None = None) -> SandboxRun:
    """Run the supervisor on ``job`` in a fresh sandbox; never raises on a hostile program.

    ``support`` defaults to :func:`isolation_support` of ``mode``; ``hide`` (used without a minimal root)
    to :func:`default_hidden_paths`; ``tmp_root`` is where the temp working directory is created
    (default: the system temp dir)."""
    return _run(support or isolation_support(mode), job, limits, hide=hide, tmp_root=tmp_root)


def _run(support: IsolationSupport, job: Job, limits: SandboxLimits, *, hide: Sequence[str] | None,
         tmp_root: str | None) -> SandboxRun:
    run_id, nonce = secrets.token_hex(8), secrets.token_hex(16)
    uids = _fresh_uids() if support.drop_uid else None
    workdir = tempfile.mkdtemp(prefix="procmem-sbx-", dir=tmp_root)
    mountns = "mount" in support.namespaces
    tree = support.tree if mountns else (workdir, support.python, *DEVICES)  # the host's /tmp and /proc are shared
    started = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    run: SandboxRun | None = None
    result_r, result_w = os.pipe()
    try:
        if uids is not None:
            os.chown(workdir, uids[1], uids[1])
        source = _child_source()
        env = _base_env("/tmp" if mountns else workdir, run_id)
        root = support.root if mountns else None
        private = default_hidden_paths(support.python) if hide is None else list(hide)
        hidden = [] if root is not None else private  # with a minimal root nothing of the host is in view
        secret = [p for p in private if p.startswith("/tmp/")]
        box = Box(result_fd=result_w, nonce=nonce, run_id=run_id, mountns=mountns,
                  uids=list(uids) if uids else None, drop_caps=uids is None, tmp_mb=limits.tmp_mb,
                  workdir=workdir, python=support.python, env=env, src=source,
                  worker_limits=_worker_limits(limits), supervisor_limits=_supervisor_limits(limits),
                  hide=hidden, root=root, tree=list(tree), secret=secret,
                  hostname=_HOSTNAME if "uts" in support.namespaces else None,
                  deadline_s=limits.timeout_s + _STARTUP_S + _DRAIN_S)
        config = json.dumps(Message(job=job, sandbox=box)).encode()
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
    run.tree = tree
    run.secret = tuple(secret)
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
    minimal = setup.get("root") == "minimal"
    if level == "strong" and (failures or setup.get("capabilities") not in (None, "none") or not minimal):
        level = "partial"
    if minimal and support.root is not None:
        filesystem = (f"minimal root: {len(support.root['binds'])} read-only binds (the interpreter, its standard "
                      f"library, the libraries they load); private /tmp; own /proc; {', '.join(DEVICES)}")
    elif setup.get("mount") == "private":
        filesystem = "host, read-only, private /tmp"
    else:
        filesystem = "host"
    facts: dict[str, Any] = {
        "isolation": level,
        "namespaces": ",".join(support.namespaces) or "none",
        "network": "none" if "net" in support.namespaces else "host",
        "filesystem": filesystem,
        "root": "minimal" if minimal else "host",
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
