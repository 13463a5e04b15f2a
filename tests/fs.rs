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
    // Linux 6.1's FUSE client has no O_TMPFILE (FUSE_TMPFILE came in 6.6):
    // the guest kernel refuses it before any request reaches hutch.
    assert!(
        out.contains("FAIL tmpfile_and_linkat: OSError: [Errno 95]"),
        "{out}"
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
});
