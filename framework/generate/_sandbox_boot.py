"""The first code that runs inside a sandbox (``tempering.generate.sandbox``), standard library
only, started as ``python -I -S`` with a minimal environment.

It reads one JSON object from standard input (the code, the tests, the limits and a marker
token), then, in this order:

1. with ``isolate`` (inside fresh mount, pid, network and IPC namespaces): a tmpfs on /tmp, the
   home directory of the user who runs tempering replaced by an empty tmpfs (the Python
   installation, if it lives there, bound back in, read-only), every other mount re-mounted
   read-only;
2. resource limits (CPU time, address space, processes, file size, open files, no core files);
3. the drop to an unprivileged uid/gid (when started as root) and ``no_new_privs``;
4. an audit hook that ends the process on process creation, sockets, ctypes, writes outside the
   working directory and reads of ``/proc/*/environ``;
5. the code, then the tests, in one namespace; only when both return does it write the marker to
   the marker file descriptor, so code that exits early (``sys.exit(0)``, ``os._exit(0)``) fails.
"""

import json
import os
import resource
import sys

BLOCKED_EXIT = 86
SETUP_EXIT = 87


def _mount_calls():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source, target, fstype, flags, data=None):
        args = [None if a is None else os.fsencode(a) for a in (source, target, fstype, data)]
        if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")

    def umount(target):
        if libc.umount2(os.fsencode(target), 2) != 0:  # MNT_DETACH
            err = ctypes.get_errno()
            raise OSError(err, f"umount {target}: {os.strerror(err)}")

    def no_new_privs():
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS

    return mount, umount, no_new_privs


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
_KEEP = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def _mounts():
    """(target, flags to keep) for every mount, outermost first."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            target = fields[1].encode().decode("unicode_escape")
            keep = sum(flag for name, flag in _KEEP.items() if name in fields[3].split(","))
            out.append((target, keep))
    return out


def _isolate_filesystem(cfg, mount, umount):
    tmpfs = f"size={cfg['tmpfs_mb']}m,mode=1777"
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
    home, prefix = cfg.get("home"), sys.base_prefix
    home = os.path.realpath(home) if home and os.path.isdir(home) else None
    if home in ("/", "/tmp"):
        home = None
    if home:
        inside = prefix == home or prefix.startswith(home + os.sep)
        if inside:
            os.mkdir("/tmp/.python")
            mount(prefix, "/tmp/.python", None, MS_BIND | MS_REC)
        mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        if inside:
            os.makedirs(prefix, mode=0o755)
            mount("/tmp/.python", prefix, None, MS_BIND | MS_REC)
            umount("/tmp/.python")
            os.rmdir("/tmp/.python")
    hidden = (home + os.sep) if home else None
    for target, keep in _mounts():
        if target == "/tmp" or target == "/proc" or target.startswith("/proc/"):
            continue
        if hidden and target.startswith(hidden) and not target.startswith(prefix):
            continue  # under the hidden home: no longer reachable
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
    os.mkdir("/tmp/work", 0o700)
    return "/tmp/work"


def _limit(cfg):
    def cap(kind, value):
        resource.setrlimit(kind, (value, value))

    cap(resource.RLIMIT_CPU, max(1, int(cfg["cpu_seconds"] + 0.999)))
    cap(resource.RLIMIT_AS, cfg["memory_bytes"])
    cap(resource.RLIMIT_FSIZE, cfg["file_bytes"])
    cap(resource.RLIMIT_NOFILE, cfg["open_files"])
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_NPROC, cfg["processes"])


def _drop(uid, workdir):
    os.chown(workdir, uid, uid)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


_PROCESS = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
            "subprocess.Popen", "os.kill", "os.killpg", "pty.spawn"}
_PATH_EVENTS = {"os.mkdir", "os.remove", "os.rename", "os.rmdir", "os.symlink", "os.link",
                "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.copyfile",
                "shutil.copytree", "shutil.move", "shutil.rmtree", "os.mkfifo", "os.mknod"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(workdir):
    realpath, write, _exit = os.path.realpath, os.write, os._exit
    root = workdir + os.sep

    def outside(path):
        if isinstance(path, int) or path is None:
            return False
        full = realpath(os.path.join(workdir, os.fsdecode(path)))
        return full != workdir and not full.startswith(root)

    def stop(event, args):
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - the process ends either way
            pass
        write(2, f"\nsandbox: blocked {event} {args!r:.200}\n".encode())
        _exit(BLOCKED_EXIT)

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            wants_write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if wants_write and outside(path):
                stop(event, args)
            if isinstance(path, (str, bytes)):
                text = os.fsdecode(path)
                if text.startswith("/proc/") and text.rstrip("/").endswith(("/environ", "/mem")):
                    stop(event, args)
        elif event in _PROCESS or event.startswith(("socket.", "ctypes.")):
            stop(event, args)
        elif event in _PATH_EVENTS and any(outside(a) for a in args[:2]
                                           if isinstance(a, (str, bytes))):
            stop(event, args)

    sys.addaudithook(hook)


def main():
    cfg = json.loads(sys.stdin.buffer.read())
    try:
        mount, umount, no_new_privs = _mount_calls()
        workdir = (_isolate_filesystem(cfg, mount, umount) if cfg["isolate"]
                   else cfg["workdir"])
        os.chdir(workdir)
        _limit(cfg)
        if cfg["uid"] is not None:
            _drop(cfg["uid"], workdir)
        no_new_privs()
    except OSError as exc:
        os.write(2, f"sandbox setup failed: {exc}\n".encode())
        os._exit(SETUP_EXIT)
    del mount, umount, no_new_privs
    sys.modules.pop("ctypes", None)
    marker_fd, marker = cfg["marker_fd"], cfg["marker"].encode()
    code, tests, audit = cfg["code"], cfg["tests"], cfg["audit_hook"]
    del cfg
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    if audit:
        _audit(workdir)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(code, "solution.py", "exec"), namespace)
    exec(compile(tests, "tests.py", "exec"), namespace)
    sys.stdout.flush()
    os.write(marker_fd, marker)


if __name__ == "__main__":
    main()
