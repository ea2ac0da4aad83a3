"""The program that runs *inside* the code sandbox (procmem-sandbox-child).

procmem never imports this module to run it: :mod:`procmem.verifiers.sandbox` passes its source text to
``python -I -S -B -c SOURCE supervise``. It uses the standard library only and runs on any Python
3.10+, because the sandbox may run a system interpreter rather than procmem's own.

Two processes run from this source:

* the **supervisor** (trusted; pid 1 of the sandbox's pid namespace when there is one). It reads its
  configuration (a :class:`procmem.verifiers.sandbox.Message`) from stdin before any untrusted code
  exists, hardens its own view (private ``/tmp``, read-only filesystem; without a minimal root also
  hidden paths), starts the worker, drops its own privileges, runs the task's tests and reports the
  outcome on a pipe (``result_fd``) that only it holds;
* the **worker** (untrusted): a fresh ``exec`` of the interpreter that runs the candidate program and
  answers call requests. Given a minimal root (:func:`enter_root`), it gets a mount namespace of its
  own whose ``/`` is a fresh read-only tmpfs holding only the interpreter, its standard library, the
  shared libraries they load, a private ``/tmp``, its own ``/proc`` and ``/dev/null``, ``/dev/zero``,
  ``/dev/urandom``; the host's filesystem is detached from it. It never sees the tests, the expected
  values or the result pipe, has no capabilities, and (as root) runs under a fresh unprivileged uid.

The same source also answers ``probe`` (run once per process by the host, outside any root): which
directories and shared libraries the interpreter needs, found by importing every extension module of
its standard library and listing what the dynamic loader loaded.

The tests run in the supervisor: calling the entry point there sends the arguments to the worker and
gets back a plain value (None, bool, int, float, complex, str, bytes, list, tuple, dict, set,
frozenset) re-built from data, so nothing the candidate does can change how the tests judge it.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import math
import os
import re
import resource
import signal
import sys
import time

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs each sandboxed process ~5 ms
if TYPE_CHECKING:
    from typing import Any

    from .sandbox import Box, Job, JobTest, Message, RootPlan  # (mypy cannot follow procmem.verifiers here)

_MARK = "procmem-sandbox-child"
_MAX_LINE = 8 << 20  # the biggest message either side accepts, in bytes
_MAX_DEPTH = 200  # nesting limit of encoded values
_SHORT = 160  # characters of a value or message shown in feedback


# ---------------------------------------------------------------------------------------------------------
# Messages: one JSON object per line on a pipe.


class LineReader:
    """Reads newline-terminated messages from a file descriptor, refusing lines longer than ``cap``."""

    def __init__(self, fd: int, cap: int = _MAX_LINE) -> None:
        self.fd = fd
        self.cap = cap
        self.buf = bytearray()

    def readline(self) -> bytes | None:
        """The next line without its newline; None at end of file; OverflowError when too long."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > self.cap:
                raise OverflowError(f"message longer than {self.cap} bytes")
            try:
                chunk = os.read(self.fd, 1 << 16)
            except InterruptedError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def read(self) -> dict | None:
        line = self.readline()
        if line is None:
            return None
        msg = json.loads(line.decode("utf-8"))
        if not isinstance(msg, dict):
            raise ValueError("not a message")
        return msg


def send(fd: int, msg: dict) -> None:
    data = (json.dumps(msg, separators=(",", ":")) + "\n").encode("utf-8")
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---------------------------------------------------------------------------------------------------------
# Values: plain data only, encoded as JSON with one-key tags for the types JSON lacks.


def encode(value: Any, depth: int = 0) -> Any:
    """JSON data for a plain value; TypeError for anything else (exact types only, no subclasses)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested more than {_MAX_DEPTH} deep")
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is set:
        return {"s": [encode(v, depth + 1) for v in value]}
    if kind is frozenset:
        return {"f": [encode(v, depth + 1) for v in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(f"found {kind.__name__}")


def decode(data: Any, depth: int = 0) -> Any:
    """The plain value that :func:`encode` encoded, built afresh from JSON data."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested more than {_MAX_DEPTH} deep")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(v, depth + 1) for v in data]
    if type(data) is dict and len(data) == 1:
        ((tag, inner),) = data.items()
        if tag == "b" and type(inner) is str:
            return bytes.fromhex(inner)
        if type(inner) is not list:
            raise ValueError("malformed value")
        if tag == "c" and len(inner) == 2:
            return complex(float(inner[0]), float(inner[1]))
        items = [decode(v, depth + 1) for v in inner]
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "f":
            return frozenset(items)
        if tag == "d" and all(type(p) is list and len(p) == 2 for p in items):
            return {p[0]: p[1] for p in items}
    raise ValueError("malformed value")


def show(value: object, limit: int = _SHORT) -> str:
    """A value as Python would write it, shortened."""
    try:
        return short(repr(value), limit)
    except Exception:  # a value whose repr fails still gets a description
        return f"<{type(value).__name__}>"


def short(text: object, limit: int = _SHORT) -> str:
    try:
        out = text if type(text) is str else repr(text)
    except Exception:  # a value whose repr fails still gets a description
        out = f"<{type(text).__name__}>"
    out = " ".join(str(out).split())
    return out if len(out) <= limit else out[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# Hardening (supervisor, before any untrusted code runs). Linux only; every step reports what it did.

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_RELATIME = 1 << 21
_MOUNT_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": _MS_NOATIME,
                "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME}
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP = 1, 4, 24
_PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4

_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int = 0) -> None:
    import ctypes

    lib = _libc()
    ul = ctypes.c_ulong
    _check(lib.prctl(ctypes.c_int(option), ul(arg), ul(0), ul(0), ul(0)), f"prctl({option})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    import ctypes

    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    lib = _libc()
    what = f"mount {source or fstype} on {target}" if source or fstype else f"remount {target}"
    _check(lib.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), what)


def _unescape(path: str) -> str:
    out, i = [], 0
    while i < len(path):
        digits = path[i + 1 : i + 4]
        if path[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mounts() -> list:
    """(mount point, per-mount options) of every mount, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 6:
                found.append((_unescape(fields[4]), fields[5].split(",")))
    return found


def _under(path: str, roots: list) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def remount_readonly(skip: list) -> list:
    """Make every mount read-only except those at or under ``skip``; returns the failures."""
    failures, done = [], set()
    for point, opts in mounts():
        if point in done or _under(point, skip) or "ro" in opts:
            continue
        done.add(point)
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        for opt in opts:
            flags |= _MOUNT_FLAGS.get(opt, 0)
        try:
            mount(None, point, None, flags)
        except OSError as err:
            if err.errno != 2:  # a mount point hidden under another mount is not reachable: harmless
                failures.append(f"{point} ({os.strerror(err.errno or 0)})")
    return failures


def private_tmp(size_mb: int, at: str = "/tmp") -> None:
    mount("tmpfs", at, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size_mb}m,nr_inodes={1024 + 64 * size_mb},mode=1777")


def hide(paths: list) -> list:
    """Cover each directory with an empty read-only tmpfs; returns the ones hidden."""
    hidden = []
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                mount("tmpfs", path, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=4k,mode=0555")
                hidden.append(path)
            except OSError:
                pass
    return hidden


# The minimal root, built the way bubblewrap and nsjail build theirs: a fresh tmpfs, read-only bind mounts
# of what the interpreter needs at the same paths (and the symlinks on the way to them), then pivot_root
# into it and detach the old root, so that no path leads back to the host's files.

_CLONE_NEWNS, _MS_REC, _MS_PRIVATE, _MNT_DETACH = 0x20000, 1 << 14, 1 << 18, 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203, "ppc64": 203,
               "s390x": 217, "i686": 217, "i386": 217, "armv7l": 218, "armv8l": 218}
_ST_FLAGS = {os.ST_NOSUID: _MS_NOSUID, os.ST_NODEV: _MS_NODEV, os.ST_NOEXEC: _MS_NOEXEC, os.ST_NOATIME: _MS_NOATIME,
             os.ST_NODIRATIME: _MS_NODIRATIME, os.ST_RELATIME: _MS_RELATIME}
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")
_PROC_OPTIONS = ("subset=pid,hidepid=invisible", "hidepid=invisible", "hidepid=2", "")


def enter_root(root: RootPlan, tmp_mb: int) -> None:
    """Move this process into a new mount namespace whose root is the minimal tree of ``root``."""
    import ctypes

    lib = _libc()
    number = _PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(0, f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(lib.unshare(ctypes.c_int(_CLONE_NEWNS)), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing done below propagates to the supervisor's view
    new = "/tmp"  # any directory serves as the mount point: the host's mounts vanish with the pivot
    mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=8192,mode=0755")
    for link, target in root["links"]:
        os.makedirs(new + os.path.dirname(link), 0o755, exist_ok=True)
        os.symlink(target, new + link)
    for path in root["binds"]:
        bind_readonly(path, new + path)
    os.mkdir(new + "/dev", 0o755)
    for device in DEVICES:
        _mount_point(new + device, directory=False)
        mount(device, new + device, None, _MS_BIND)  # a device node is writable on a read-only mount too
    os.mkdir(new + "/proc", 0o555)
    mount_proc(new + "/proc")
    os.mkdir(new + "/tmp", 0o755)
    private_tmp(tmp_mb, new + "/tmp")
    os.chdir(new)
    _check(lib.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")  # the old root now lies on top of "/"
    _check(lib.umount2(b".", ctypes.c_int(_MNT_DETACH)), "umount2(old root)")
    os.chdir("/")
    mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.chdir("/tmp")


def bind_readonly(source: str, target: str) -> None:
    """Bind ``source`` at ``target`` (made as an empty file or directory), read-only."""
    _mount_point(target, directory=os.path.isdir(source))
    mount(source, target, None, _MS_BIND)
    flags = os.statvfs(target).f_flag
    if not flags & os.ST_RDONLY:  # the supervisor's view is read-only already, so its binds are too
        locked = sum(ms for st, ms in _ST_FLAGS.items() if flags & st)  # a user namespace may not clear these
        mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | locked)


def _mount_point(path: str, *, directory: bool) -> None:
    if directory:
        os.makedirs(path, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))


def mount_proc(target: str) -> None:
    """A proc file system of this pid namespace: only its processes, others' hidden where the kernel can."""
    for options in _PROC_OPTIONS:
        try:
            mount("proc", target, "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, options or None)
            return
        except OSError:
            if not options:
                raise


# ---------------------------------------------------------------------------------------------------------
# Paths in feedback: a candidate's exception text may quote paths, but only ones inside the sandbox's tree.

_PATH = re.compile(r"(?<![\w.~/-])/[^\s'\"`,;:()\[\]{}<>|=*?]*")
HIDDEN_PATH = "<hidden path>"


def in_tree(path: str, tree: list) -> bool:
    """Whether ``path`` is one of ``tree``'s paths, under one, or a directory on the way to one."""
    path = "/" + os.path.normpath(path).lstrip("/")
    return any(_under(path, [root]) or _under(root, [path]) for root in tree)


def scrub_paths(text: str, tree: list, secret: list | tuple = ()) -> str:
    """``text`` with every absolute path outside ``tree`` (see :func:`in_tree`), or under one of ``secret``,
    replaced. ``secret`` names host directories whose paths read like the sandbox's own (a checkout under
    ``/tmp``, where the worker's private ``/tmp`` is in its tree)."""

    def keep(path: str) -> bool:
        return in_tree(path, tree) and not _under("/" + os.path.normpath(path).lstrip("/"), list(secret))

    return _PATH.sub(lambda m: m.group(0) if keep(m.group(0)) else HIDDEN_PATH, text)


def drop_capabilities() -> bool:
    """Drop the bounding, ambient, effective, permitted and inheritable sets; True if none remain."""
    drop_bounding_set()
    clear_capabilities()
    return _no_capabilities()


def drop_bounding_set() -> None:
    """Empty the bounding and ambient sets, so that no later ``exec`` can gain a capability."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            last = int(fh.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        with contextlib.suppress(OSError):
            prctl(_PR_CAPBSET_DROP, cap)
    with contextlib.suppress(OSError):
        prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)


def clear_capabilities() -> None:
    """Clear the effective, permitted and inheritable sets of this process."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    with contextlib.suppress(OSError):
        _check(_libc().capset(ctypes.byref(header), data), "capset")


def _no_capabilities() -> bool:
    """No effective, permitted, inheritable or ambient capability (with no_new_privs, exec adds none)."""
    try:
        with open("/proc/self/status") as fh:
            caps = {k: v.strip() for k, _, v in (ln.partition(":") for ln in fh) if k.startswith("Cap")}
    except OSError:
        return False
    try:
        return all(int(caps.get(k, "0"), 16) == 0 for k in ("CapEff", "CapPrm", "CapInh", "CapAmb"))
    except ValueError:
        return False


def drop_uid(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def set_limits(limits: dict) -> None:
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))


def close_fds_except(keep: set) -> None:
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# Worker: runs the candidate program and answers calls. Untrusted from the moment the program runs.


def _compile(code: str) -> tuple[Any, str | None]:
    """Compile the program; if it does not parse, retry without leading and trailing prose.

    Cuts are made at unindented lines only (where prose would start or stop), a bounded number of times.
    """
    try:
        return compile(code, "<answer>", "exec"), None
    except SyntaxError as err:
        first = err
    lines = code.split("\n")
    edges = [i for i, line in enumerate(lines) if line[:1] not in ("", " ", "\t", "#", ")", "]", "}")]
    starts = edges[:16]
    ends = [len(lines), *[i for i in reversed(edges) if i > 0][:16]]
    for begin in starts:
        for end in ends:
            if end <= begin or (begin == 0 and end == len(lines)):
                continue
            try:
                return compile("\n".join(lines[begin:end]), "<answer>", "exec"), None
            except SyntaxError:
                continue
    return None, f"SyntaxError: {first.msg} (line {first.lineno})"


def work(req_fd: int, resp_fd: int) -> None:
    with contextlib.suppress(Exception):
        prctl(_PR_SET_DUMPABLE, 0)
    # Still trusted: no candidate code has run yet, so the supervisor can believe this report.
    send(resp_fd, {"boot": True, "capabilities": "none" if _no_capabilities() else "some",
                   "root": sorted(os.listdir("/"))})
    reader = LineReader(req_fd)
    hello = reader.read() or {}
    program, error = _compile(str(hello.get("code", "")))
    if program is None:
        send(resp_fd, {"ready": False, "error": error})
        return
    space = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(program, space)
    except BaseException as err:  # the program's own failure while loading is feedback, not a crash
        _flush()
        send(resp_fd, {"ready": False, "error": f"{type(err).__name__}: {short(str(err))}"})
        return
    missing = [n for n in hello.get("names", []) if not callable(space.get(n))]
    send(resp_fd, {"ready": True, "missing": missing})
    _flush()
    while True:
        request = reader.read()
        if request is None:
            return
        reply = _call(space, request)
        _flush()  # the program's output reaches the host before the supervisor can end the run
        send(resp_fd, reply)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


def _call(space: dict, request: dict) -> dict:
    try:
        func: Any = space[request["name"]]
        args = decode(request.get("args", []))
        kwargs = decode(request.get("kwargs", {"d": []}))
        value = func(*args, **kwargs)
    except BaseException as err:
        try:
            message = short(str(err))
        except BaseException:
            message = ""
        return {"raise": [type(err).__name__, message]}
    try:
        return {"ok": encode(value)}
    except TypeError as err:
        kinds = "None, bool, int, float, complex, str, bytes, list, tuple, dict, set or frozenset"
        return {"bad": f"returned a value that is not plain data ({short(str(err), 80)}; use {kinds})"}
    except (ValueError, RecursionError, MemoryError) as err:
        return {"bad": f"returned a value that cannot be passed back ({short(str(err) or type(err).__name__)})"}


# ---------------------------------------------------------------------------------------------------------
# Supervisor: hardens, starts the worker, runs the tests, reports.


class WorkerGone(BaseException):
    """The worker process ended; tests cannot call it any more."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one."""


class Worker:
    def __init__(self, pid: int, req_fd: int, resp_fd: int, tree: list, secret: list) -> None:
        self.pid, self.req_fd, self.tree, self.secret = pid, req_fd, tree, secret
        self.reader = LineReader(resp_fd)
        self.status: int | None = None
        self.calls: list = []  # (call text, value text) of the current test

    def scrub(self, text: object) -> str:
        """The candidate's text with paths outside the sandbox's tree left out."""
        return scrub_paths(text if type(text) is str else short(text, 1000), self.tree, self.secret)

    def ask(self, msg: dict) -> dict:
        try:
            send(self.req_fd, msg)
            reply = self.reader.read()
        except OverflowError:
            raise WorkerGone(f"the program sent a reply larger than {_MAX_LINE >> 20} MiB") from None
        except (ValueError, RecursionError, MemoryError):
            return {"bad": "sent a reply that could not be read"}
        except OSError:
            reply = None
        if reply is None:
            raise WorkerGone(self.describe_exit())
        return reply

    def describe_exit(self) -> str:
        """Why the worker stopped answering (it is killed if it can be, and reaped)."""
        if self.status is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            for _ in range(50):
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = self.pid, 0
                if pid:
                    self.status = status
                    break
                time.sleep(0.01)
            else:
                return "the program closed its connection to the tests"
        return describe_status(self.status)

    def boot(self, root: RootPlan | None) -> str | None:
        """None when the worker started without privileges (in ``root``, if given); else why it cannot run
        the program."""
        try:
            report = self.reader.read()
        except (OverflowError, ValueError, OSError):
            report = None
        if report is None:
            self.describe_exit()
            return f"the sandbox could not start the program (its process ended with status {self.status})"
        if report.get("error"):
            self.describe_exit()
            return f"the sandbox could not start the program: {short(report['error'], 300)}"
        if report.get("capabilities") != "none":
            return "the sandbox could not drop the program's privileges"
        if root is not None and report.get("root") != sorted(root["top"]):
            return f"the program's root is not the one built for it: {short(report.get('root'), 300)}"
        return None


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        causes = {int(signal.SIGXCPU): "the CPU time limit", int(signal.SIGSEGV): "a crash, e.g. too deep recursion",
                  int(signal.SIGXFSZ): "the file size limit"}
        why = causes.get(sig, "a limit or a signal")
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"the program was killed by {name} ({why})"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return f"the program exited with code {code} (exiting is not allowed; return a value instead)"


class Proxy:
    """Stands for a candidate function inside the tests: calls go to the worker by value."""

    def __init__(self, name: str, worker: Worker) -> None:
        self.name, self.worker = name, worker

    def __call__(self, *args: object, **kwargs: object) -> object:
        shown = [show(a, 60) for a in args] + [f"{k}={show(v, 60)}" for k, v in kwargs.items()]
        text = f"{self.name}({', '.join(shown)})"
        try:
            request = {"name": self.name, "args": encode(list(args)), "kwargs": encode(dict(kwargs))}
        except (TypeError, ValueError) as err:
            raise TypeError(f"the test passes an argument that is not plain data: {err}") from None
        reply = self.worker.ask(request)
        if "ok" in reply:
            try:
                value = decode(reply["ok"])
            except (ValueError, TypeError, RecursionError, OverflowError, MemoryError):
                reply = {"bad": "returned a value that could not be read"}
            else:
                self.worker.calls.append((text, "returned " + show(value)))
                return value
        if "bad" in reply:
            bad = CandidateError(f"{text} {short(self.worker.scrub(reply['bad']), 300)}")
            bad.feedback = str(bad)  # type: ignore[attr-defined]
            raise bad
        raised = reply.get("raise") or ["Exception", ""]
        kind, message = short(raised[0], 60), short(self.worker.scrub(raised[1])) if len(raised) > 1 else ""
        outcome = f"raised {kind}: {message}" if message else "raised " + kind
        self.worker.calls.append((text, outcome))
        raise candidate_exception(kind, message, f"{text} {outcome}")


def candidate_exception(kind: str, message: str, feedback: str) -> BaseException:
    """The builtin exception the candidate raised (so tests can catch it), else a CandidateError."""
    cls = getattr(builtins, kind, None)
    err: BaseException
    try:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError
        err = cls(message)
    except Exception:
        err = CandidateError(f"{kind}: {message}" if message else kind)
    err.feedback = feedback  # type: ignore[attr-defined]
    return err


def same(actual: Any, expected: Any) -> bool:
    """Equality for input/output tests: tuples match lists, floats match within 1e-9."""
    numbers = (int, float)
    if type(actual) in (list, tuple) and type(expected) in (list, tuple):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected, strict=True))
    if type(actual) is dict and type(expected) is dict:
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in actual)
    if type(actual) is float or type(expected) is float:
        if type(actual) in numbers and type(expected) in numbers:
            return actual == expected or math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)
        return False
    if type(actual) in (int, bool) and type(expected) in (int, bool):
        return actual == expected
    return type(actual) is type(expected) and actual == expected


def failure_message(err: BaseException, worker: Worker) -> str:
    last = worker.calls[-1] if worker.calls else None
    feedback = getattr(err, "feedback", None)
    if feedback is not None:
        return str(feedback)
    if isinstance(err, AssertionError):
        detail = short(str(err))
        head = "assertion failed" + (": " + detail if detail else "")
        return head + ("; {} {}".format(*last) if last else "")
    message = f"the test raised {type(err).__name__}: {short(str(err))}"
    return message + ("; {} {}".format(*last) if last else "")


def run_test(index: int, test: JobTest, space: dict, worker: Worker, entry: str) -> tuple:
    """(passed, message) of one test: an assert snippet (``code``) or an input/output pair."""
    worker.calls = []
    try:
        if "code" in test:
            exec(compile(test["code"], f"<test {index + 1}>", "exec"), space)
            return True, ""
        args = test["args"]
        value = space[entry](*args)
        if same(value, test["expected"]):
            return True, ""
        return False, "{} {}, which is not the expected value".format(*worker.calls[-1])
    except WorkerGone:
        raise
    except BaseException as err:
        return False, failure_message(err, worker)


def _expire(_signum: int, _frame: object) -> None:
    os._exit(124)


def supervise(cfg: Message) -> None:
    box = cfg["sandbox"]
    # A backstop for an orphaned sandbox (the host process died): the host kills the run long before.
    # As a pid namespace's init, the supervisor only gets signals it handles, hence the handler.
    signal.signal(signal.SIGALRM, _expire)
    signal.alarm(int(box["deadline_s"]) + 1)
    result_fd = int(box["result_fd"])
    os.set_inheritable(result_fd, False)
    with contextlib.suppress(OSError):
        prctl(_PR_SET_DUMPABLE, 0)
    setup = harden(box)
    worker = start_worker(box)
    setup.update(drop_own_privileges(box))
    set_limits(box["supervisor_limits"])
    broken = worker.boot(box["root"])
    setup["worker"] = broken or "started"
    setup["root"] = "minimal" if box["root"] is not None and broken is None else "host"
    send(result_fd, {"ev": "hello", "nonce": box["nonce"], "setup": setup})
    judge(cfg["job"], worker, result_fd, box["nonce"], broken)


def harden(box: Box) -> dict:
    """The supervisor's own view: a private /tmp and a read-only filesystem (in a mount namespace).

    Without a minimal root for the worker, which would share this view, paths in ``box["hide"]`` are
    covered first."""
    setup: dict = {"mount": "host"}
    if box["hostname"]:
        name = box["hostname"].encode()
        try:
            _check(_libc().sethostname(name, len(name)), "sethostname")
            setup["hostname"] = box["hostname"]
        except OSError:  # the host's name shows; everything else still holds
            setup["hostname"] = "host's"
    if box["mountns"]:
        private_tmp(box["tmp_mb"])
        hide_list = box["hide"] if box["root"] is None else []
        hidden = hide([p for p in hide_list if not (_under("/tmp", [p]) or _under(p, ["/tmp"]))])
        failures = remount_readonly(["/tmp", *hidden])
        setup.update(mount="private", tmp="private tmpfs", hidden=len(hidden), readonly_failures=failures)
        os.chdir("/tmp")
    else:
        os.chdir(box["workdir"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return setup


def start_worker(box: Box) -> Worker:
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            close_fds_except({req_r, resp_w})
            os.set_inheritable(req_r, True)
            os.set_inheritable(resp_w, True)
            if box["root"] is not None:
                enter_root(box["root"], box["tmp_mb"])
            set_limits(box["worker_limits"])
            if box["uids"]:
                drop_bounding_set()
                drop_uid(box["uids"][1])  # also clears every capability
            elif box["drop_caps"]:
                drop_capabilities()
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
            prctl(_PR_SET_NO_NEW_PRIVS, 1)
            python = box["python"]
            argv = [python, "-I", "-S", "-B", "-c", box["src"], "worker", str(req_r), str(resp_w), box["run_id"]]
            os.execve(python, argv, box["env"])
        except BaseException as err:
            with contextlib.suppress(BaseException):
                send(resp_w, {"boot": False, "error": f"{type(err).__name__}: {err}"})
        os._exit(127)
    os.close(req_r)
    os.close(resp_w)
    return Worker(pid, req_w, resp_r, box["tree"], box["secret"])


def drop_own_privileges(box: Box) -> dict:
    facts: dict = {}
    if box["uids"]:
        drop_bounding_set()
        drop_uid(box["uids"][0])
        facts["uid"] = "dropped"
    elif box["drop_caps"]:
        facts["uid"] = "same"
    facts["capabilities"] = "none" if drop_capabilities() else "some kept"
    with contextlib.suppress(OSError):
        prctl(_PR_SET_NO_NEW_PRIVS, 1)
    return facts


def judge(job: Job, worker: Worker, result_fd: int, nonce: str, broken: str | None) -> None:
    entry = str(job["entry_point"])
    tests = job["tests"]
    passed, gone = 0, broken
    try:
        ready = {} if broken else worker.ask({"code": job["code"], "names": [entry]})
    except WorkerGone as err:
        ready = {"ready": False, "error": str(err)}
    if gone is not None:
        pass
    elif not ready.get("ready"):
        gone = "the program failed while loading: {}".format(
            short(worker.scrub(ready.get("error") or "no reason given"), 300))
    elif ready.get("missing"):
        gone = f"the program does not define a function named {entry}"
    send(result_fd, {"ev": "loaded", "ok": gone is None, "error": gone})
    space = {"__builtins__": builtins, "__name__": "__tests__", entry: Proxy(entry, worker)}
    if gone is None and job["setup"]:
        try:
            exec(compile(job["setup"], "<setup>", "exec"), space)
        except BaseException as err:
            gone = f"the task's test setup failed: {type(err).__name__}: {short(str(err))}"
    for index, test in enumerate(tests):
        send(result_fd, {"ev": "start", "i": index})
        if gone is not None:
            ok, message = False, "not run: " + gone
        else:
            try:
                ok, message = run_test(index, test, space, worker, entry)
            except WorkerGone as err:
                ok, message = False, str(err)
                gone = "the program had already ended"
        passed += bool(ok)
        send(result_fd, {"ev": "result", "i": index, "ok": bool(ok), "msg": message})
    send(result_fd, {"ev": "done", "nonce": nonce, "passed": passed, "total": len(tests)})


def probe() -> dict:
    """What this interpreter needs (run by the host, outside any root, with the worker's flags).

    ``path``: its import directories that exist; ``modules``: the extension modules in them that import;
    ``loaded``: the shared objects the dynamic loader loaded for them, named as it found them (through
    symlinks); ``mapped``: the real paths of every file mapped into memory.
    """
    import ctypes

    dirs = [p for p in sys.path if os.path.isdir(p)]
    modules = []
    for name in sorted({n.partition(".")[0] for d in dirs for n in os.listdir(d) if n.endswith(".so")}):
        try:
            __import__(name)
            modules.append(name)
        except BaseException:
            continue

    class Info(ctypes.Structure):
        _fields_ = [("addr", ctypes.c_size_t), ("name", ctypes.c_char_p)]

    loaded: list = []

    def seen(info: Any, _size: int, _data: object) -> int:
        loaded.append(os.fsdecode(info.contents.name or b""))
        return 0

    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Info), ctypes.c_size_t, ctypes.c_void_p)(seen)
    with contextlib.suppress(Exception):  # without it, the loader's names are missing: the host's check fails
        _libc().dl_iterate_phdr(callback, None)
    mapped = set()
    with contextlib.suppress(OSError), open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.rstrip("\n").split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and not fields[5].endswith(" (deleted)"):
                mapped.add(fields[5])
    return {"path": dirs, "modules": modules, "loaded": sorted({p for p in loaded if p.startswith("/")}),
            "mapped": sorted(mapped)}


def main(argv: list) -> None:
    if argv and argv[0] == "worker":
        work(int(argv[1]), int(argv[2]))
        os._exit(0)
    if argv and argv[0] == "probe":
        sys.stdout.write("\n" + json.dumps(probe()) + "\n")  # on a line of its own, whatever a module printed
        sys.stdout.flush()
        os._exit(0)
    cfg = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    try:
        supervise(cfg)
    except BaseException as err:
        sys.stderr.write(f"{_MARK}: supervisor failed: {type(err).__name__}: {err}\n")
        sys.stderr.flush()
        os._exit(70)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
