"""Tries to reach host files outside the workspace share from inside the guest.

Run from the workspace root (the share): python3 fs_escape.py SECONDS HOST_SECRET_PATH
HOST_SECRET_INO. The host test plants `../secret` next to the workspace, a second secret
at HOST_SECRET_PATH, `hostlink` (a host-made hard link to a public file) and `y` (which
the host swaps between a file and a symlink to the secret while this runs).

Every attempt prints `attempt NAME tries=N ok=M` (M = tries that behaved), and anything
read that is not known benign content is printed in full after `READ`, so a leaked
secret shows up in the output. The script never knows the secret itself.
"""

import ctypes
import errno
import os
import socket
import stat
import sys
import threading
import time

DURATION = float(sys.argv[1])
HOST_SECRET = sys.argv[2]
HOST_SECRET_INO = int(sys.argv[3])
BENIGN = {b"", b"BENIGN-X\n", b"BENIGN-Y\n", b"HOSTLINK-OK\n", b"INSIDE\n"}
WS = os.getcwd()
with open("inside", "w") as _f:
    _f.write("INSIDE\n")


def report(name, tries, ok):
    print(f"attempt {name} tries={tries} ok={ok}", flush=True)


def read_path(path, dir_fd=None, flags=0):
    """Reads `path`; returns bytes, or None when it could not be opened or read."""
    try:
        fd = os.open(path, os.O_RDONLY | flags, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def check(what, data):
    """True if `data` is harmless (nothing read, or known benign content)."""
    if data is None or data in BENIGN:
        return True
    print(f"READ {what}: {data!r}", flush=True)
    return False


def listing(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
    except OSError:
        pass


def dotdot():
    tries = ok = 0
    targets = [
        "../secret",
        "../../secret",
        "./../secret",
        os.path.join(WS, "..", "secret"),
        "../" * 12 + HOST_SECRET.lstrip("/"),
        HOST_SECRET,
        "sub/../../secret",
    ]
    for t in targets:
        tries += 1
        ok += check(t, read_path(t))
    root = os.open(".", os.O_PATH | os.O_DIRECTORY)
    for t in ["..", "../secret", "../../secret"]:
        tries += 1
        ok += check("openat(root, %s)" % t, read_path(t, dir_fd=root))
    os.close(root)
    # The guest's view of the workspace's parent is its own tmpfs: no host names.
    tries += 1
    names = listing("..") + listing("../..")
    ok += "secret" not in names
    if "secret" in names:
        print(f"READ listing of ..: {names}", flush=True)
    report("dotdot_at_the_share_root", tries, ok)


def hard_links():
    tries = ok = 0
    for src, dst in [
        ("../secret", "hl1"),
        (HOST_SECRET, "hl2"),
        ("inside", "../planted-link"),
        ("inside", os.path.join(WS, "..", "planted-link2")),
        ("/etc/passwd", "hl3"),
    ]:
        tries += 1
        try:
            os.link(src, dst)
            # Allowed only when both ends are ours; then it must be inside content.
            ok += check(f"link {src} -> {dst}", read_path(dst)) and src == "inside"
        except OSError:
            ok += 1
    # A hard link the host made is the inode the host put in the share: readable, benign.
    tries += 1
    data = read_path("hostlink")
    ok += data == b"HOSTLINK-OK\n"
    report("hard_links", tries, ok)


def rename_race():
    os.makedirs("a/b/c", exist_ok=True)
    os.makedirs("d", exist_ok=True)
    with open("a/b/c/inside", "w") as f:
        f.write("INSIDE\n")
    stop = time.time() + DURATION
    renames = [0]

    def mover():
        while time.time() < stop:
            for src, dst in [("a/b", "d/b"), ("d/b", "a/b"), ("a", "e"), ("e", "a")]:
                try:
                    os.rename(src, dst)
                    renames[0] += 1
                except OSError:
                    pass

    t = threading.Thread(target=mover)
    t.start()
    tries = ok = 0
    while time.time() < stop:
        for base in ["a/b/c", "d/b/c", "e/b/c"]:
            for rel in ["../../../secret", "../../../../secret", "../../../../../secret"]:
                tries += 1
                ok += check(f"{base}/{rel}", read_path(os.path.join(base, rel)))
            try:
                dfd = os.open(base, os.O_PATH | os.O_DIRECTORY)
            except OSError:
                continue
            for rel in ["../../../secret", "../../../../secret", "inside"]:
                tries += 1
                ok += check(f"openat({base}, {rel})", read_path(rel, dir_fd=dfd))
            os.close(dfd)
        if tries % 60 == 0:
            drop_caches()
    t.join()
    report("rename_race", tries, ok if renames[0] > 0 else 0)
    print(f"rename_race renames={renames[0]}", flush=True)


def proc_magic_links():
    tries = ok = 0
    for name, text in [
        ("pfd", "/proc/self/fd/3"),
        ("proot", "../../proc/self/root/etc/shadow"),
        ("pcwd", "/proc/self/cwd/../secret"),
        ("pmnt", "/proc/1/root/../secret"),
    ]:
        tries += 1
        try:
            os.symlink(text, name)
        except FileExistsError:
            pass
        ok += os.readlink(name) == text and check(name, read_path(name))
    # The guest's own /proc/self/fd of a workspace file is that file.
    fd = os.open("inside", os.O_RDONLY)
    tries += 1
    ok += read_path(f"/proc/self/fd/{fd}") == b"INSIDE\n"
    os.close(fd)
    # xattrs of a symlink are the link's own, never its target's.
    for name in ["pcwd", "up"]:
        tries += 1
        try:
            os.setxattr(name, "user.planted", b"1", follow_symlinks=False)
            ok += 0
            print(f"READ setxattr on symlink {name} succeeded", flush=True)
        except OSError:
            ok += 1
        tries += 1
        try:
            v = os.getxattr(name, "user.secret", follow_symlinks=False)
            ok += check(f"getxattr {name}", v)
        except OSError:
            ok += 1
    report("proc_self_fd_paths", tries, ok)


class FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * 128),
    ]


def file_handles():
    libc = ctypes.CDLL(None, use_errno=True)
    tries = ok = 0
    mount_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)

    def open_handle(fh):
        fd = libc.open_by_handle_at(mount_fd, ctypes.byref(fh), os.O_RDONLY)
        if fd < 0:
            return None
        try:
            return os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)

    # A real handle of a workspace file: opening it, if it works, gives that file.
    fh = FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    rc = libc.name_to_handle_at(-100, b"inside", ctypes.byref(fh), ctypes.byref(mount_id), 0)
    tries += 1
    print(f"name_to_handle_at rc={rc} errno={ctypes.get_errno()} type={fh.handle_type}", flush=True)
    if rc == 0:
        data = open_handle(fh)
        ok += data is None or data == b"INSIDE\n"
    else:
        ok += 1
    # Forged handles: FUSE's (node id, generation) for node ids 1..300, and an ext4-style
    # handle of the host secret's inode number.
    for node in range(1, 301):
        for ftype, words in [(0x81, [node & 0xFFFFFFFF, node >> 32, 0]), (1, [HOST_SECRET_INO, 0])]:
            if ftype == 1 and node > 1:
                continue
            f = FileHandle(handle_bytes=4 * len(words), handle_type=ftype)
            raw = b"".join(w.to_bytes(4, "little") for w in words)
            ctypes.memmove(f.f_handle, raw, len(raw))
            tries += 1
            ok += check(f"open_by_handle_at type {ftype:#x} node {node}", open_handle(f))
    os.close(mount_fd)
    report("file_handles", tries, ok)


def special_files():
    tries = ok = 0
    os.mkfifo("fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind("sock")
    s.close()
    for name, want in [("fifo", stat.S_ISFIFO), ("sock", stat.S_ISSOCK)]:
        tries += 1
        ok += want(os.lstat(name).st_mode)
    for name, kind in [("blk", stat.S_IFBLK), ("chr", stat.S_IFCHR)]:
        tries += 1
        try:
            os.mknod(name, kind | 0o666, os.makedev(1, 3))
        except OSError as e:
            ok += e.errno == errno.EPERM
    # A device node the host planted cannot be opened.
    if os.path.exists("hostdev"):
        tries += 1
        try:
            os.close(os.open("hostdev", os.O_RDWR))
        except OSError as e:
            ok += e.errno == errno.EACCES
    report("fifo_socket_and_device_nodes", tries, ok)


def guest_symlink_swap():
    stop = time.time() + DURATION
    swaps = [0]

    def swapper():
        i = 0
        while time.time() < stop:
            i += 1
            try:
                if i % 2:
                    with open("x.tmp", "w") as f:
                        f.write("BENIGN-X\n")
                    os.rename("x.tmp", "x")
                else:
                    os.symlink("../secret" if i % 4 else HOST_SECRET, "x.lnk")
                    os.rename("x.lnk", "x")
                swaps[0] += 1
            except OSError:
                pass

    t = threading.Thread(target=swapper)
    t.start()
    tries = ok = 0
    while time.time() < stop:
        tries += 1
        ok += check("x", read_path("x"))
        if tries % 50 == 0:
            drop_caches()
    t.join()
    report("guest_symlink_swap", tries, ok if swaps[0] > 0 else 0)
    print(f"guest_symlink_swap swaps={swaps[0]}", flush=True)


def host_symlink_swap():
    # The host test swaps `y` while this reads it; `y-go` tells it to start.
    with open("y-go", "w"):
        pass
    stop = time.time() + DURATION
    tries = ok = seen_file = 0
    while time.time() < stop:
        tries += 1
        data = read_path("y")
        seen_file += data == b"BENIGN-Y\n"
        ok += check("y", data)
        for flags in [os.O_NOFOLLOW]:
            tries += 1
            ok += check("y nofollow", read_path("y", flags=flags))
        if tries % 40 == 0:
            drop_caches()
    with open("y-stop", "w"):
        pass
    report("host_symlink_swap", tries, ok)
    print(f"host_symlink_swap benign_reads={seen_file}", flush=True)


def root_view():
    tries = ok = 0
    os.makedirs("/tmp/rootview", exist_ok=True)
    mounted = os.system("mount -t virtiofs hutch-root /tmp/rootview") == 0
    print(f"root_view fresh mount of hutch-root: {mounted}", flush=True)
    bases = ["/", "/.hutch/sys/"] + (["/tmp/rootview/"] if mounted else [])
    private = ["root", "home", "var", "srv", "mnt", "boot", "proc/1/environ", "tmp"]
    masked = ["etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-", "etc/sudoers",
              "etc/ssl/private", "etc/security/opasswd"]
    for base in bases:
        for p in masked:
            tries += 1
            path = base + p
            exists = os.path.lexists(path)
            ok += not exists
            if exists:
                print(f"READ exposed {path}", flush=True)
        for name in listing(base + "etc/ssh"):
            if name.startswith("ssh_host_") and name.endswith("_key"):
                print(f"READ exposed {base}etc/ssh/{name}", flush=True)
        tries += 1
        ok += not any(n.startswith("ssh_host_") and n.endswith("_key") for n in listing(base + "etc/ssh"))
        if base == "/":
            continue  # the guest's own /root, /tmp, /proc are tmpfs and procfs
        for p in private:
            tries += 1
            exists = os.path.lexists(base + p)
            ok += not exists
            if exists:
                print(f"READ exposed {base + p}: {listing(base + p)[:10]}", flush=True)
        tries += 1
        top = set(listing(base))
        allowed = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt"}
        ok += top <= allowed
        print(f"root_view {base}: {sorted(top)}", flush=True)
    if mounted:
        os.system("umount /tmp/rootview")
    report("root_view", tries, ok)


for step in [dotdot, hard_links, rename_race, proc_magic_links, file_handles, special_files,
             guest_symlink_swap, host_symlink_swap, root_view]:
    try:
        step()
    except Exception as e:  # a crash of one attempt must show, not hide the others
        print(f"attempt {step.__name__} CRASHED {type(e).__name__}: {e}", flush=True)
print("done", flush=True)
