//! The workspace share through a real guest: the conformance checks of
//! `guest/fs_conformance.py`, and what a guest must not be able to leave on
//! the host.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use hutch_e2e::{per_engine, run, Engine};

per_engine!(conformance_suite_on_the_workspace, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/fs_conformance.py");
    std::fs::copy(&script, ws.path().join("fs_conformance.py")).unwrap();
    let o = run(e, ws.path(), &["python3", "fs_conformance.py"], None);
    let out = o.stdout_str();
    eprintln!("{out}");
    for check in [
        "rename_over_existing",
        "tmpfile_and_linkat",
        "hard_links_and_symlinks",
        "chmod_chown_utimens",
        "xattrs",
        "sparse_file_over_4_gib",
        "long_unicode_and_odd_names",
        "directory_of_10k_entries",
        "fsync_and_fdatasync",
        "mmap_shared_writes_visible_through_read",
        "append_from_two_processes",
        "eight_concurrent_writers",
        "flock_and_fcntl_locks",
    ] {
        assert!(
            out.contains(&format!("ok {check}\n")),
            "{check} failed:\n{out}\n{}",
            o.stderr
        );
    }
    // The unnamed file got its name on the host, and nothing else was left.
    let tmp_dir = ws.path().join("conformance/tmpfile_and_linkat");
    let left: Vec<_> = std::fs::read_dir(&tmp_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["named"], "{out}");
    assert_eq!(
        std::fs::read(tmp_dir.join("named")).unwrap(),
        b"anonymous then named"
    );
    // Files the guest made are really on the host.
    assert_eq!(
        std::fs::read_dir(ws.path().join("conformance/directory_of_10k_entries"))
            .unwrap()
            .count(),
        10_000
    );
});

per_engine!(
    guest_cannot_plant_device_nodes_or_set_id_programs,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        let o = run(
        e,
        ws.path(),
        &["sh", "-c", "mknod disk b 8 0; mknod tty c 4 1; cp /bin/true prog && chmod 4755 prog; chmod g+s prog; ls -l prog"],
        None,
    );
        assert!(
            !ws.path().join("disk").exists() && !ws.path().join("tty").exists(),
            "{}",
            o.stderr
        );
        assert!(o.stderr.contains("mknod"), "{}", o.stderr);
        let mode = std::fs::metadata(ws.path().join("prog"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o6000, 0, "set-ID bits reached the host: {mode:o}");
        assert!(std::fs::metadata(ws.path().join("prog")).unwrap().mode() & 0o111 != 0);
    }
);

per_engine!(symlinks_resolve_inside_the_guest, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("host-secret"), "TOPSECRET").unwrap();
    std::os::unix::fs::symlink(secret.path().join("host-secret"), ws.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/shadow", ws.path().join("rel")).unwrap();
    let o = run(
        e,
        ws.path(),
        &["sh", "-c", "cat abs; cat rel; cat ../*/host-secret; ls .."],
        None,
    );
    assert!(!o.stdout_str().contains("TOPSECRET"), "{}", o.stdout_str());
    assert!(
        o.stderr.contains("abs") && o.stderr.contains("rel"),
        "{}",
        o.stderr
    );
});

per_engine!(stats_count_the_requests_a_command_makes, |e: Engine| {
    let ws = hutch_e2e::workspace();
    std::fs::write(ws.path().join("in.txt"), "x".repeat(10_000)).unwrap();
    let argv: Vec<&std::ffi::OsStr> = ["cat", "in.txt"].iter().map(std::ffi::OsStr::new).collect();
    let mut args = hutch_e2e::run_args(e, ws.path(), &argv);
    args.insert(1, "--stats".into());
    let o = hutch_e2e::Hutch::new(args).output(None);
    assert_eq!(o.status, 0, "{}", o.stderr);
    let ws_line = o
        .stderr
        .lines()
        .position(|l| l.contains("virtio-fs hutch-ws:"))
        .expect("workspace stats");
    let by_op = o.stderr.lines().nth(ws_line + 1).unwrap_or("");
    for op in ["INIT=1", "LOOKUP=", "OPEN=", "READ="] {
        assert!(by_op.contains(op), "{op} missing in {by_op:?}");
    }
    let bytes_out: u64 = o
        .stderr
        .lines()
        .nth(ws_line)
        .unwrap()
        .split(", ")
        .find_map(|f| f.strip_suffix(" bytes out")?.parse().ok())
        .unwrap();
    assert!(
        bytes_out >= 10_000,
        "the file's bytes went out: {bytes_out}"
    );
    assert!(o.stderr.contains("virtio-fs hutch-root:"), "{}", o.stderr);
    // The read-only root: zero-message opens (OPEN answered ENOSYS once, no
    // RELEASE) and no xattr reads after the first, however many files the
    // guest's init and `cat` opened and exec'd through it.
    let root_line = o
        .stderr
        .lines()
        .position(|l| l.contains("virtio-fs hutch-root:"))
        .unwrap();
    let root_ops = o.stderr.lines().nth(root_line + 1).unwrap_or("");
    let count = |op: &str| -> u64 {
        root_ops
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(op)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("OPEN") <= 1 && count("RELEASE") == 0, "{root_ops}");
    assert!(count("GETXATTR") <= 1, "{root_ops}");
    assert!(count("READ") > 0, "the root was read: {root_ops}");
});

/// How long a host-side change may stay invisible in the guest: the
/// workspace's attribute and entry timeout (5 s), plus scheduling slack.
const COHERENCE_BOUND_MS: u64 = 6_000;

per_engine!(
    host_edits_reach_a_running_guest_within_the_bound,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        std::fs::write(ws.path().join("f"), "first").unwrap();
        // `later` is looked up (and missed) before the host creates it: the
        // guest caches that miss as a negative entry, which must expire too.
        // The guest watches from the start and drops a marker as soon as it
        // sees each change; the host times from its change to the marker, so
        // the figure is the staleness itself (the guest's CREATE of the
        // marker reaches the host at once).
        let script = "cat f; echo; [ -e later ] && echo 'later exists early'; : > ready
watch() { i=0; while :; do eval \"$1\" && break; i=$((i+1)); [ $i -gt 800 ] && { echo \"STALE: $2\"; exit 3; }; sleep 0.025; done; : > \"$2\"; }
watch '[ \"$(cat f)\" = \"second version, longer\" ]' seen-f
watch '[ -e later ]' seen-later
ls new-from-host; [ -e gone ] && echo 'deleted file still visible' || echo 'delete seen'
watch '[ \"$(cat f)\" = \"SECOND VERSION, LONGER\" ]' seen-same
echo from-guest > back.txt; sync";
        std::fs::write(ws.path().join("gone"), "x").unwrap();
        let (h, mut child) = hutch_e2e::start_until_ready(e, ws.path(), script);
        let waited = |marker: &str, since: std::time::Instant| {
            assert!(
                hutch_e2e::wait_for_file(&ws.path().join(marker), 60),
                "the guest never made {marker}"
            );
            since.elapsed().as_millis() as u64
        };
        // An in-place overwrite (same inode, new size), a create and a delete.
        let changed = std::time::Instant::now();
        std::fs::write(ws.path().join("f"), "second version, longer").unwrap();
        std::fs::write(ws.path().join("new-from-host"), "n").unwrap();
        std::fs::write(ws.path().join("later"), "l").unwrap();
        std::fs::remove_file(ws.path().join("gone")).unwrap();
        let ms = waited("seen-f", changed);
        let created_ms = waited("seen-later", changed);
        // The guest has read (and cached) the new version: an in-place
        // overwrite of the same size, which only a new mtime can reveal.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let overwritten = std::time::Instant::now();
        std::fs::write(ws.path().join("f"), "SECOND VERSION, LONGER").unwrap();
        let same_ms = waited("seen-same", overwritten);
        let (code, out, err) = hutch_e2e::collect(&mut child);
        assert_eq!(code, Some(0), "{out}\n{err}");
        eprintln!(
            "host overwrite visible in the guest after {ms} ms, a create over a cached miss after {created_ms} ms, a same-size overwrite of a cached file after {same_ms} ms (host clock, change to the guest's marker)"
        );
        assert!(
            ms <= COHERENCE_BOUND_MS
                && created_ms <= COHERENCE_BOUND_MS
                && same_ms <= COHERENCE_BOUND_MS,
            "host changes took {ms} / {created_ms} / {same_ms} ms to reach the guest"
        );
        assert!(!out.contains("later exists early"), "{out}");
        assert!(out.starts_with("first\n"), "{out}");
        assert!(
            out.contains("new-from-host\n") && out.contains("delete seen"),
            "{out}"
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("back.txt")).unwrap(),
            "from-guest\n"
        );
        hutch_e2e::assert_no_leftovers(h.runtime.path());
    }
);

/// `hutch run --stats WS -- sh -c SCRIPT` on `e` with the default levers.
fn run_with_stats(e: Engine, ws: &std::path::Path, script: &str) -> hutch_e2e::Output {
    hutch_e2e::run_script_with_stats(e, ws, script, "")
}

per_engine!(
    opens_and_writes_cost_no_open_release_or_capability_query,
    |e: Engine| {
        // Zero-message open: OPEN is answered ENOSYS once and never sent
        // again, nor RELEASE; the guest kernel does not ask for
        // security.capability before each write, since the server clears
        // privileges itself under HANDLE_KILLPRIV_V2
        // (guest/kernel/patches/0003-…). Each round appends to one file,
        // stats it (refreshing its attributes) and reads another.
        let ws = hutch_e2e::workspace();
        std::fs::write(ws.path().join("r"), "host content\n").unwrap();
        let script = "i=0; while [ $i -lt 50 ]; do echo line >> f; stat -c %s f >/dev/null; cat r >/dev/null; i=$((i+1)); done
wc -l < f; cat r";
        let o = run_with_stats(e, ws.path(), script);
        assert_eq!(o.status, 0, "{}", o.stderr);
        assert_eq!(o.stdout_str(), "50\nhost content\n");
        assert_eq!(
            std::fs::read_to_string(ws.path().join("f")).unwrap(),
            "line\n".repeat(50)
        );
        let ops = hutch_e2e::workspace_ops(&o.stderr);
        eprintln!("workspace requests: {ops:?}");
        let n = |op: &str| ops.get(op).copied().unwrap_or(0);
        assert_eq!(n("WRITE"), 50, "{ops:?}");
        // One RELEASE at most: `f` is created before the first OPEN tells
        // the guest that the server takes none.
        assert!(n("OPEN") <= 1 && n("RELEASE") <= 1, "{ops:?}");
        assert!(n("GETXATTR") <= 1, "a capability query per write: {ops:?}");
        // The other file is read once: its pages stay cached across opens.
        assert!(n("READ") <= 2, "{ops:?}");
    }
);

per_engine!(
    o_creat_open_of_a_name_not_yet_looked_up_is_one_request,
    |e: Engine| {
        // hutch's guest kernel sends CREATE without a LOOKUP first for a
        // name it has not seen (guest/kernel/patches/0004-…); the server
        // creates the name, or answers what is there with its entry and the
        // guest goes on as after a LOOKUP: appends keep the content, a
        // symlink is followed, a directory is refused, O_EXCL is honoured,
        // O_TRUNC truncates. HUTCH_FS_LEVERS=-create_lookup is the stock
        // LOOKUP + CREATE, for comparison.
        let script = ": > newfile
echo more >> kept
echo via >> link
{ echo x > sub; } 2>/dev/null || echo isdir
set -C; { echo > kept; } 2>/dev/null || echo exists; set +C
echo short > long
mkdir d; i=0; while [ $i -lt 50 ]; do : > d/n$i; i=$((i+1)); done
ls d | wc -l; cat kept target long";
        let mut lookups = Vec::new();
        for levers in ["", "-create_lookup"] {
            let ws = hutch_e2e::workspace();
            let root = ws.path();
            std::fs::write(root.join("kept"), "host bytes\n").unwrap();
            std::fs::write(root.join("long"), "a longer host line\n").unwrap();
            std::fs::create_dir(root.join("sub")).unwrap();
            std::os::unix::fs::symlink("target", root.join("link")).unwrap();
            let o = hutch_e2e::run_script_with_stats(e, root, script, levers);
            assert_eq!(o.status, 0, "levers {levers:?}: {}", o.stderr);
            assert_eq!(
                o.stdout_str(),
                "isdir\nexists\n50\nhost bytes\nmore\nvia\nshort\n",
                "levers {levers:?}"
            );
            let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
            assert_eq!(read("newfile"), "");
            assert_eq!(read("kept"), "host bytes\nmore\n");
            assert_eq!(read("target"), "via\n");
            assert_eq!(read("long"), "short\n");
            assert!(root.join("link").symlink_metadata().unwrap().is_symlink());
            let ops = hutch_e2e::workspace_ops(&o.stderr);
            eprintln!("levers {levers:?}: workspace requests: {ops:?}");
            let n = |op: &str| ops.get(op).copied().unwrap_or(0);
            assert!(n("CREATE") >= 51, "{ops:?}");
            lookups.push(n("LOOKUP"));
        }
        assert!(
            lookups[0] < 15,
            "each new name was looked up before CREATE: {lookups:?}"
        );
        assert!(lookups[1] >= 55, "stock: LOOKUP, then CREATE: {lookups:?}");
    }
);

per_engine!(making_a_name_sends_no_lookup_first, |e: Engine| {
    // mkdir, symlink and link of a new name go straight to the server
    // (guest/kernel/patches/0005-…); a name that exists, even one the
    // guest has never looked up, is still EEXIST, and `mkdir -p` goes
    // through an existing directory.
    let ws = hutch_e2e::workspace();
    let root = ws.path();
    std::fs::write(root.join("kept"), "k\n").unwrap();
    std::fs::create_dir(root.join("pre")).unwrap();
    let script =
        "mkdir d; i=0; while [ $i -lt 30 ]; do mkdir d/m$i; ln -s x d/s$i; i=$((i+1)); done
mkdir pre 2>/dev/null || echo exists
mkdir -p pre/x/y && echo deep
mkdir d/m0 2>/dev/null || echo exists
ln -s y d/s0 2>/dev/null || echo exists
ln kept d/h && ln kept d/h 2>/dev/null || echo exists
ls d | wc -l; readlink d/s29";
    let o = run_with_stats(e, root, script);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout_str(),
        "exists\ndeep\nexists\nexists\nexists\n61\nx\n"
    );
    assert!(root.join("pre/x/y").is_dir());
    assert_eq!(
        std::fs::read_link(root.join("d/s29")).unwrap().to_str(),
        Some("x")
    );
    assert_eq!(std::fs::read_to_string(root.join("d/h")).unwrap(), "k\n");
    let ops = hutch_e2e::workspace_ops(&o.stderr);
    eprintln!("workspace requests: {ops:?}");
    let n = |op: &str| ops.get(op).copied().unwrap_or(0);
    // A name the guest holds (d/s0, d/h) is refused without a request.
    assert!(
        n("MKDIR") >= 33 && n("SYMLINK") >= 30 && n("LINK") >= 1,
        "{ops:?}"
    );
    assert!(
        n("LOOKUP") < 15,
        "each new name was looked up before it was made: {ops:?}"
    );
});

per_engine!(
    renaming_onto_a_name_not_yet_looked_up_sends_no_lookup,
    |e: Engine| {
        // The guest kernel renames without looking the target name up
        // (guest/kernel/patches/0006-…), and the server's reply names the
        // inode the rename replaced: a file the guest holds under another
        // name (a hard link it has stat'ed) shows its new link count at
        // once, not after the attribute timeout. Renames over files the
        // guest never looked up replace them; the host's EISDIR, ENOTDIR,
        // ENOTEMPTY and (RENAME_NOREPLACE) EEXIST come back as they are.
        // HUTCH_FS_LEVERS=-rename_report is the stock LOOKUP + RENAME.
        let script = r#"python3 - <<'EOF'
import ctypes, errno, os
os.mkdir('d')
for i in range(30):
    open(f'd/f{i}', 'w').close()
for i in range(30):
    os.rename(f'd/f{i}', f'd/r{i}')
with open('new', 'w') as f:
    f.write('from guest\n')
os.rename('new', 't/over')
print('links', os.stat('t/h1').st_nlink)
open('x', 'w').close()
os.rename('x', 't/h2')
print('links', os.stat('t/h1').st_nlink)
def err(a, b):
    try:
        os.rename(a, b)
        return 'renamed'
    except OSError as e:
        return errno.errorcode[e.errno]
print(err('t/over', 't/adir'), err('t/adir', 't/over'), err('t/adir', 't/full'))
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.renameat2(-100, b't/over', -100, b't/kept', 1)
print('noreplace', errno.errorcode.get(ctypes.get_errno()) if rc else 'renamed')
print(len(os.listdir('d')))
print(open('t/over').read(), end='')
EOF"#;
        let mut lookups = Vec::new();
        for levers in ["", "-rename_report"] {
            let ws = hutch_e2e::workspace();
            let root = ws.path();
            // In a directory the guest never lists (python lists its
            // working directory, which would put every name in its cache).
            let t = root.join("t");
            std::fs::create_dir(&t).unwrap();
            std::fs::write(t.join("over"), "host bytes\n").unwrap();
            std::fs::write(t.join("kept"), "kept\n").unwrap();
            std::fs::write(t.join("h1"), "linked\n").unwrap();
            std::fs::hard_link(t.join("h1"), t.join("h2")).unwrap();
            std::fs::create_dir(t.join("adir")).unwrap();
            std::fs::create_dir(t.join("full")).unwrap();
            std::fs::write(t.join("full/x"), "x").unwrap();
            let o = hutch_e2e::run_script_with_stats(e, root, script, levers);
            assert_eq!(o.status, 0, "levers {levers:?}: {}", o.stderr);
            assert_eq!(
                o.stdout_str(),
                "links 2\nlinks 1\nEISDIR ENOTDIR ENOTEMPTY\nnoreplace EEXIST\n30\nfrom guest\n",
                "levers {levers:?}"
            );
            let read = |name: &str| std::fs::read_to_string(t.join(name)).unwrap();
            assert_eq!(read("over"), "from guest\n");
            assert_eq!(read("kept"), "kept\n");
            assert_eq!(read("h2"), "");
            assert_eq!(read("h1"), "linked\n");
            assert!(root.join("d/r29").is_file() && !root.join("d/f0").exists());
            let ops = hutch_e2e::workspace_ops(&o.stderr);
            eprintln!("levers {levers:?}: workspace requests: {ops:?}");
            let n = |op: &str| ops.get(op).copied().unwrap_or(0);
            // With the lever, the host also answers the errors of names the
            // guest never looked up; stock, the guest's LOOKUPs let it
            // answer most of them itself.
            let least = if levers.is_empty() { 34 } else { 32 };
            assert!(n("RENAME") + n("RENAME2") >= least, "{ops:?}");
            lookups.push(n("LOOKUP"));
        }
        assert!(
            lookups[0] + 25 < lookups[1],
            "each rename looked its target up: {lookups:?}"
        );
    }
);

per_engine!(
    listings_include_dot_and_dotdot_as_on_the_host,
    |e: Engine| {
        // A workspace directory lists "." and ".." as the host file system
        // does (ls -a, the shell's .* glob), through READDIR and READDIRPLUS
        // alike (ls -l stats each entry, which makes the guest ask for
        // READDIRPLUS), over several requests.
        let ws = hutch_e2e::workspace();
        let sub = ws.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join(".hidden"), "").unwrap();
        for i in 0..400 {
            std::fs::write(sub.join(format!("file-{i:03}")), "").unwrap();
        }
        let script = "ls -a sub | head -4; echo sub/.*; ls -fa sub | wc -l; ls -la sub | wc -l
ls -la sub | awk '$NF == \".\" || $NF == \"..\" {print $1 \" \" $NF}' | cut -c1 ";
        let o = run_with_stats(e, ws.path(), script);
        assert_eq!(o.status, 0, "{}", o.stderr);
        // ls -la: "total" plus 403 lines; both dot entries are directories.
        assert_eq!(
            o.stdout_str(),
            ".\n..\n.hidden\nfile-000\nsub/. sub/.. sub/.hidden\n403\n404\nd\nd\n"
        );
        let ops = hutch_e2e::workspace_ops(&o.stderr);
        eprintln!("workspace requests: {ops:?}");
        let n = |op: &str| ops.get(op).copied().unwrap_or(0);
        assert!(n("READDIR") >= 2 && n("READDIRPLUS") >= 2, "{ops:?}");
    }
);

per_engine!(
    ls_l_asks_no_xattrs_of_files_the_server_said_have_none,
    |e: Engine| {
        // `ls -l` asks for two xattrs of every file; the server's entries
        // say which files have none (xattr_hint.rs, guest kernel patch
        // 0008), and the guest answers those itself. A file with an xattr
        // set on the host still shows it; one the guest sets shows at once.
        // HUTCH_FS_LEVERS=-xattr_hint asks the server for every one.
        let script = r#"ls -la d > /dev/null; ls -la d | wc -l
python3 - <<'EOF'
import errno, os
print(os.listxattr('tagged'), os.getxattr('tagged', 'user.t'))
print(os.listxattr('d/f1'))
try:
    os.getxattr('d/f1', 'user.x')
except OSError as e:
    print(errno.errorcode[e.errno])
os.setxattr('d/f1', 'user.x', b'v')
print(os.getxattr('d/f1', 'user.x'), os.listxattr('d/f1'))
EOF"#;
        let mut getxattrs = Vec::new();
        for levers in ["", "-xattr_hint"] {
            let ws = hutch_e2e::workspace();
            let root = ws.path();
            std::fs::create_dir(root.join("d")).unwrap();
            for i in 0..200 {
                std::fs::write(root.join(format!("d/f{i}")), "").unwrap();
            }
            std::fs::write(root.join("tagged"), "t").unwrap();
            hutch_e2e::set_xattr(&root.join("tagged"), "user.t", b"host");
            let o = hutch_e2e::run_script_with_stats(e, root, script, levers);
            assert_eq!(o.status, 0, "levers {levers:?}: {}", o.stderr);
            assert_eq!(
                o.stdout_str(),
                "203\n['user.t'] b'host'\n[]\nENODATA\nb'v' ['user.x']\n",
                "levers {levers:?}"
            );
            assert_eq!(
                hutch_e2e::get_xattr(&root.join("d/f1"), "user.x").as_deref(),
                Some(&b"v"[..])
            );
            let ops = hutch_e2e::workspace_ops(&o.stderr);
            eprintln!("levers {levers:?}: workspace requests: {ops:?}");
            getxattrs.push(ops.get("GETXATTR").copied().unwrap_or(0));
        }
        assert!(
            getxattrs[0] < 20 && getxattrs[1] >= 800,
            "GETXATTR with and without the hints: {getxattrs:?}"
        );
    }
);

per_engine!(
    callers_pick_their_answers_up_without_an_interrupt,
    |e: Engine| {
        // With the workspace's guest_poll lever (guest kernel patch 0010)
        // the caller of a synchronous request watches the used ring for its
        // answer with the queue's interrupts off, so most answers need no
        // interrupt. The stock driver sleeps until one: -guest_poll, or the
        // guest's virtiofs.hutch_poll_us=0. 300 probes of missing names (one
        // LOOKUP each) and a name the host created, found; the answers are
        // right every way. The polling run gets a 5 ms budget so that other
        // tests' guests on the same CPUs do not make its watches run out.
        let ws = hutch_e2e::workspace();
        std::fs::write(ws.path().join("here"), "x").unwrap();
        let script = r#"i=0; n=0
while [ $i -lt 300 ]; do [ -e "m$i" ] && n=$((n+1)); i=$((i+1)); done
[ -e here ] && echo "found $n"; true"#;
        let mut seen = Vec::new();
        for (levers, budget) in [("", "5000"), ("-guest_poll", "5000"), ("", "0")] {
            let kernel_arg = format!("virtiofs.hutch_poll_us={budget}");
            let o = hutch_e2e::run_with_stats(
                e,
                ws.path(),
                &["sh", "-c", script],
                levers,
                &[&kernel_arg],
            );
            let case = format!("levers {levers:?}, {kernel_arg}");
            assert_eq!(o.status, 0, "{case}: {}", o.stderr);
            assert_eq!(o.stdout_str(), "found 0\n", "{case}");
            let (lookups, requests, interrupts) =
                hutch_e2e::workspace_counts(&case, &o.stderr, "LOOKUP");
            assert!(lookups >= 300, "{case}: {lookups} LOOKUP");
            seen.push((case, requests, interrupts));
        }
        let (case, requests, interrupts) = &seen[0];
        assert!(
            interrupts * 2 < *requests,
            "{case}: {interrupts} interrupts for {requests} requests"
        );
        for (case, requests, interrupts) in &seen[1..] {
            assert!(
                interrupts * 4 >= requests * 3,
                "{case}: {interrupts} interrupts for {requests} requests"
            );
        }
    }
);

per_engine!(
    a_big_listing_takes_an_eighth_of_the_readdir_requests,
    |e: Engine| {
        // The guest reads a listing 32 KiB per READDIR (big_readdir.rs,
        // guest kernel patch 0009) instead of one page: `ls -f` of 4,000
        // entries. HUTCH_FS_LEVERS=-big_readdir is the stock page per
        // request. Then, with the lever on, every name arrives exactly once
        // through `ls -f`, `ls -l` (READDIRPLUS after lookups), os.listdir
        // and a caller whose getdents64 buffer takes 512 bytes at a time
        // (the entries that did not fit are asked for again from their
        // offset).
        let ws = hutch_e2e::workspace();
        let root = ws.path();
        std::fs::create_dir(root.join("d")).unwrap();
        for i in 0..4000 {
            std::fs::write(root.join(format!("d/f{i:04}")), "").unwrap();
        }
        let mut readdirs = Vec::new();
        for levers in ["", "-big_readdir"] {
            let o = hutch_e2e::run_script_with_stats(e, root, "ls -f d | wc -l", levers);
            assert_eq!(o.status, 0, "levers {levers:?}: {}", o.stderr);
            assert_eq!(o.stdout_str(), "4002\n", "levers {levers:?}");
            let ops = hutch_e2e::workspace_ops(&o.stderr);
            eprintln!("levers {levers:?}: workspace requests: {ops:?}");
            readdirs.push(ops.get("READDIR").copied().unwrap_or(0));
        }
        assert!(
            readdirs[0] <= 8 && readdirs[1] >= 30,
            "READDIR with and without 32 KiB chunks: {readdirs:?}"
        );
        let script = r#"ls -f d | LC_ALL=C sort | md5sum; ls -l d | tail -n +2 | awk '{print $NF}' | wc -l
python3 - <<'EOF'
import ctypes, os, struct
want = {'f%04d' % i for i in range(4000)}
names = os.listdir('d')
print('listdir', len(names), set(names) == want)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open('d', os.O_RDONLY | os.O_DIRECTORY)
buf = ctypes.create_string_buffer(512)
small, calls = [], 0
while True:
    n = libc.syscall(217, fd, buf, 512)
    assert n >= 0, os.strerror(ctypes.get_errno())
    if n == 0:
        break
    calls += 1
    raw, at = buf.raw[:n], 0
    while at < n:
        reclen = struct.unpack_from('H', raw, at + 16)[0]
        small.append(raw[at + 19:at + reclen].split(b'\0')[0].decode())
        at += reclen
print('small', len(small), set(small) == want | {'.', '..'}, calls > 200)
EOF"#;
        let o = hutch_e2e::run_script_with_stats(e, root, script, "");
        assert_eq!(o.status, 0, "{}", o.stderr);
        let mut names: Vec<String> = (0..4000).map(|i| format!("f{i:04}")).collect();
        names.extend([".".to_string(), "..".to_string()]);
        names.sort();
        let listing = names.iter().map(|n| format!("{n}\n")).collect::<String>();
        let sum = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(listing.as_bytes())?;
                c.wait_with_output()
            })
            .expect("md5sum on the host");
        assert_eq!(
            o.stdout_str(),
            format!(
                "{}4000\nlistdir 4000 True\nsmall 4002 True True\n",
                String::from_utf8_lossy(&sum.stdout)
            )
        );
    }
);

per_engine!(isatty_of_a_shared_file_sends_no_request, |e: Engine| {
    // A file or directory on the share is never a terminal: the guest
    // kernel answers isatty()'s TCGETS itself (guest/kernel/patches/0007-…),
    // where each one was a FUSE_IOCTL round trip (Python's open() asks for
    // every file). Other ioctls (lsattr's FS_IOC_GETFLAGS) still reach the
    // server.
    let ws = hutch_e2e::workspace();
    std::fs::write(ws.path().join("f"), "content\n").unwrap();
    let script = r#"i=0; while [ $i -lt 30 ]; do [ -t 0 ] < f && echo tty; i=$((i+1)); done
[ -t 0 ] < . && echo dir-tty
python3 -c "
import os
for i in range(10):
    with open('f') as f:
        assert f.read() == 'content\n' and not f.isatty()
print('python ok')"
lsattr -d . >/dev/null 2>&1; echo lsattr done"#;
    let o = run_with_stats(e, ws.path(), script);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert_eq!(o.stdout_str(), "python ok\nlsattr done\n");
    let ops = hutch_e2e::workspace_ops(&o.stderr);
    eprintln!("workspace requests: {ops:?}");
    let n = |op: &str| ops.get(op).copied().unwrap_or(0);
    // lsattr's one FS_IOC_GETFLAGS; 41 isatty() calls sent none.
    assert!(
        (1..=3).contains(&n("IOCTL")),
        "isatty() reached the server: {ops:?}"
    );
});

per_engine!(
    creating_and_removing_files_costs_no_parent_getattr,
    |e: Engine| {
        // The guest kernel's FUSE keeps a directory's mode and owner valid
        // across entry changes (guest/kernel/patches/0002-…), and FLUSH is
        // not sent: a create is one CREATE (patch 0004), an unlink is UNLINK.
        let ws = hutch_e2e::workspace();
        let script = "mkdir d; i=0; while [ $i -lt 100 ]; do : > d/f$i; i=$((i+1)); done
i=0; while [ $i -lt 100 ]; do rm d/f$i; i=$((i+1)); done; ls d | wc -l";
        let o = run_with_stats(e, ws.path(), script);
        assert_eq!(o.status, 0, "{}", o.stderr);
        assert_eq!(o.stdout_str(), "0\n");
        let ops = hutch_e2e::workspace_ops(&o.stderr);
        eprintln!("workspace requests: {ops:?}");
        let n = |op: &str| ops.get(op).copied().unwrap_or(0);
        assert_eq!(n("CREATE"), 100, "{ops:?}");
        assert_eq!(n("UNLINK"), 100, "{ops:?}");
        assert!(n("FLUSH") <= 1, "FLUSH is answered ENOSYS once: {ops:?}");
        assert!(
            n("GETATTR") < 10,
            "each create or unlink refetched the directory's attributes: {ops:?}"
        );
    }
);
