#!/usr/bin/env python3
"""File-system conformance checks, run inside a hutch guest on the workspace
share (the current directory). Prints one line per check: "ok NAME" or
"FAIL NAME: why"; exits 1 if any failed. Standard library only."""

import errno
import fcntl
import mmap
import os
import stat
import subprocess
import sys
import threading
import time

BASE = os.path.join(os.getcwd(), "conformance")
results = []


def check(fn):
    name = fn.__name__
    d = os.path.join(BASE, name)
    os.makedirs(d, exist_ok=True)
    try:
        fn(d)
        results.append((name, None))
        print(f"ok {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure
        results.append((name, e))
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    return fn


def write(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


@check
def rename_over_existing(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    write(a, b"new")
    write(b, b"old")
    os.rename(a, b)
    assert read(b) == b"new" and not os.path.exists(a)


def link_fd(fd, d, name):
    """linkat(AT_FDCWD, "/proc/self/fd/N", dir, name, AT_SYMLINK_FOLLOW), the
    unprivileged way to name an O_TMPFILE file. (os.link with default dir fds
    calls link(2), which never follows the /proc link.)"""
    dfd = os.open(d, os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
    finally:
        os.close(dfd)


@check
def tmpfile_and_linkat(d):
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o644)
    os.write(fd, b"anonymous")
    assert os.fstat(fd).st_size == 9 and os.fstat(fd).st_nlink == 0
    assert os.listdir(d) == [], os.listdir(d)
    link_fd(fd, d, "named")
    os.write(fd, b" then named")
    os.close(fd)
    assert read(os.path.join(d, "named")) == b"anonymous then named"
    # Never linked: nothing is left behind.
    fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600)
    os.write(fd, b"scratch")
    os.close(fd)
    # O_EXCL: may never get a name.
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
    try:
        link_fd(fd, d, "excl")
        raise AssertionError("an O_EXCL tmpfile was linked")
    except FileNotFoundError:
        pass
    os.close(fd)
    assert os.listdir(d) == ["named"], os.listdir(d)


@check
def hard_links_and_symlinks(d):
    f = os.path.join(d, "f")
    write(f, b"x")
    os.link(f, os.path.join(d, "hard"))
    assert os.stat(f).st_nlink == 2
    assert os.stat(f).st_ino == os.stat(os.path.join(d, "hard")).st_ino
    os.symlink("f", os.path.join(d, "rel"))
    os.symlink(f, os.path.join(d, "abs"))
    assert os.readlink(os.path.join(d, "rel")) == "f"
    assert read(os.path.join(d, "rel")) == b"x" and read(os.path.join(d, "abs")) == b"x"
    assert stat.S_ISLNK(os.lstat(os.path.join(d, "rel")).st_mode)


@check
def chmod_chown_utimens(d):
    f = os.path.join(d, "f")
    write(f, b"x")
    os.chmod(f, 0o640)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640
    st = os.stat(f)
    os.chown(f, st.st_uid, st.st_gid)
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(f)
    assert st.st_atime_ns == 1_000_000_123 and st.st_mtime_ns == 2_000_000_456, (st.st_atime_ns, st.st_mtime_ns)


@check
def xattrs(d):
    f = os.path.join(d, "f")
    write(f, b"x")
    os.setxattr(f, "user.hutch", b"value")
    assert os.getxattr(f, "user.hutch") == b"value"
    assert "user.hutch" in os.listxattr(f)
    os.removexattr(f, "user.hutch")
    assert "user.hutch" not in os.listxattr(f)


@check
def sparse_file_over_4_gib(d):
    f = os.path.join(d, "sparse")
    with open(f, "wb") as h:
        h.seek(5 << 30)
        h.write(b"end")
    st = os.stat(f)
    assert st.st_size == (5 << 30) + 3
    assert st.st_blocks * 512 < (1 << 20), "not sparse"
    with open(f, "rb") as h:
        h.seek(5 << 30)
        assert h.read() == b"end"
        h.seek(1 << 30)
        assert h.read(4) == b"\0\0\0\0"


@check
def long_unicode_and_odd_names(d):
    names = [b"n" * 255, "ünïcödé-😀".encode(), b"sp ace", b"new\nline", b"\xff\xfe-raw", b"-dash", b"tab\tname"]
    for n in names:
        write(os.path.join(os.fsencode(d), n), n)
    got = set(os.listdir(os.fsencode(d)))
    for n in names:
        assert n in got, n
        assert read(os.path.join(os.fsencode(d), n)) == n
    try:
        write(os.path.join(d, "n" * 256), b"")
        raise AssertionError("a 256-byte name was accepted")
    except OSError as e:
        assert e.errno == errno.ENAMETOOLONG, e


@check
def directory_of_10k_entries(d):
    for i in range(10_000):
        open(os.path.join(d, f"e{i:05}"), "wb").close()
    names = os.listdir(d)
    assert len(names) == 10_000 and len(set(names)) == 10_000
    assert sum(1 for _ in os.scandir(d)) == 10_000


@check
def fsync_and_fdatasync(d):
    fd = os.open(os.path.join(d, "f"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(d, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)


@check
def mmap_shared_writes_visible_through_read(d):
    f = os.path.join(d, "m")
    write(f, b"\0" * 8192)
    with open(f, "r+b") as h:
        m = mmap.mmap(h.fileno(), 8192, mmap.MAP_SHARED)
        m[4096:4101] = b"hello"
        m.flush()
        m.close()
    with open(f, "rb") as h:
        h.seek(4096)
        assert h.read(5) == b"hello"


@check
def append_from_two_processes(d):
    f = os.path.join(d, "log")
    script = f"import os\nfd=os.open({f!r}, os.O_WRONLY|os.O_APPEND|os.O_CREAT, 0o644)\nfor i in range(500): os.write(fd, b'%s%04d\\n' % (__import__('sys').argv[1].encode(), i))\n"
    procs = [subprocess.Popen([sys.executable, "-c", script, tag]) for tag in "AB"]
    for p in procs:
        assert p.wait() == 0
    lines = read(f).split(b"\n")[:-1]
    assert len(lines) == 1000, len(lines)
    assert all(len(l) == 5 for l in lines), "torn append"
    assert sorted(lines) == sorted([b"A%04d" % i for i in range(500)] + [b"B%04d" % i for i in range(500)])


@check
def eight_concurrent_writers(d):
    payload = os.urandom(256 << 10)
    def own(i):
        p = os.path.join(d, f"w{i}")
        for _ in range(5):
            write(p + ".tmp", payload)
            os.rename(p + ".tmp", p)
    threads = [threading.Thread(target=own, args=(i,)) for i in range(8)]
    shared = os.path.join(d, "shared")
    fd = os.open(shared, os.O_CREAT | os.O_WRONLY, 0o644)
    def at_offset(i):
        for k in range(16):
            os.pwrite(fd, bytes([i]) * 4096, (k * 8 + i) * 4096)
    threads += [threading.Thread(target=at_offset, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.close(fd)
    for i in range(8):
        got = read(os.path.join(d, f"w{i}"))
        assert len(got) == len(payload) and got == payload, f"w{i}: {len(got)} bytes"
    s = read(shared)
    assert len(s) == 128 * 4096
    for k in range(16):
        for i in range(8):
            blk = s[(k * 8 + i) * 4096:(k * 8 + i + 1) * 4096]
            assert blk == bytes([i]) * 4096


@check
def flock_and_fcntl_locks(d):
    f = os.path.join(d, "lock")
    write(f, b"x")
    a = open(f, "rb")
    fcntl.flock(a, fcntl.LOCK_EX)
    probe = "import fcntl,sys\nf=open(sys.argv[1],'rb')\ntry:\n fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\nexcept BlockingIOError: print('busy')\n"
    out = subprocess.run([sys.executable, "-c", probe, f], capture_output=True, text=True).stdout.strip()
    assert out == "busy", f"flock not exclusive: {out}"
    fcntl.flock(a, fcntl.LOCK_UN)
    out = subprocess.run([sys.executable, "-c", probe, f], capture_output=True, text=True).stdout.strip()
    assert out == "got", out
    b = open(f, "r+b")
    fcntl.lockf(b, fcntl.LOCK_EX)
    probe2 = "import fcntl,sys\nf=open(sys.argv[1],'r+b')\ntry:\n fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\nexcept OSError: print('busy')\n"
    out = subprocess.run([sys.executable, "-c", probe2, f], capture_output=True, text=True).stdout.strip()
    assert out == "busy", f"fcntl lock not exclusive: {out}"


failed = [n for n, e in results if e]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
