//! The writable root through a real guest: installs under `/usr/local`,
//! pip-style module writes, edits and deletions in `/etc`, new directories in
//! `/var`, `/opt` and `/srv` all work in the guest, land in guest RAM only,
//! and leave the host's file system as it was; a second run starts clean;
//! `hutch.root=ro` gives the read-only root back.

use std::path::Path;

use hutch_e2e::{per_engine, run, Engine};

/// A name no other run or test uses (also a valid Python module name).
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("hutchov_{what}_{}_{nanos}", std::process::id())
}

/// A host file in `/etc` the guest sees and may delete (not a masked secret).
fn deletable_etc_file() -> String {
    [
        "debian_version",
        "issue",
        "host.conf",
        "issue.net",
        "nsswitch.conf",
    ]
    .iter()
    .find(|f| {
        Path::new("/etc")
            .join(f)
            .symlink_metadata()
            .is_ok_and(|m| m.is_file())
    })
    .expect("a plain file in /etc to delete in the guest")
    .to_string()
}

/// What a guest could have left on the host under `name`.
fn host_paths(name: &str) -> Vec<String> {
    [
        format!("/usr/local/bin/{name}"),
        format!("/etc/{name}"),
        format!("/var/tmp/{name}"),
        format!("/opt/{name}"),
        format!("/srv/{name}"),
        format!("/usr/lib/python3/dist-packages/{name}_sys.py"),
    ]
    .into()
}

fn assert_host_clean(name: &str) {
    for p in host_paths(name) {
        assert!(
            Path::new(&p).symlink_metadata().is_err(),
            "{p} appeared on the host"
        );
    }
}

per_engine!(writes_to_the_root_stay_in_the_guest, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let n = unique("w");
    let f = deletable_etc_file();
    let hosts = std::fs::read("/etc/hosts").unwrap();
    let deleted = std::fs::read(Path::new("/etc").join(&f)).unwrap();
    let script = format!(
        r#"set -e
N={n}; F={f}
printf '#!/bin/sh\necho ran %s\n' "$N" > /usr/local/bin/$N
chmod 755 /usr/local/bin/$N
/usr/local/bin/$N
U=$(python3 -c 'import site; print(site.getusersitepackages())')
mkdir -p "$U"
echo "WHO = 'user'" > "$U/${{N}}_user.py"
echo "WHO = 'system'" > /usr/lib/python3/dist-packages/${{N}}_sys.py
python3 -c "import ${{N}}_user as u, ${{N}}_sys as s; print('imported', u.WHO, s.WHO)"
echo "10.9.8.7 $N" >> /etc/hosts
grep -q " $N\$" /etc/hosts && echo hosts-appended
echo "$N" > /etc/$N
test "$(cat /etc/$N)" = "$N" && echo etc-created
echo x > /var/tmp/$N
echo x > /opt/$N
mkdir -p /srv/$N/sub
echo x > /srv/$N/sub/file
echo dirs-made
rm /etc/$F
test ! -e /etc/$F
ls /etc | grep -qx "$F" || echo etc-deleted
grep -q '^overlay / overlay ' /proc/mounts && echo root-is-overlay
test ! -e /hutch && test ! -e /.hutch && echo initramfs-hidden
python3 -c "import os; fd = os.open('/var/tmp/big', os.O_CREAT | os.O_WRONLY); os.posix_fallocate(fd, 0, 1 << 40)" 2>&1 | grep -q 'No space left' && echo upper-bounded
"#
    );
    let o = run(e, ws.path(), &["sh", "-c", &script], None);
    let out = o.stdout_str();
    eprintln!("{out}{}", o.stderr);
    assert_eq!(o.status, 0, "{out}\n{}", o.stderr);
    for want in [
        format!("ran {n}"),
        "imported user system".into(),
        "hosts-appended".into(),
        "etc-created".into(),
        "dirs-made".into(),
        "etc-deleted".into(),
        "root-is-overlay".into(),
        "initramfs-hidden".into(),
        "upper-bounded".into(),
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "{want:?} missing:\n{out}\n{}",
            o.stderr
        );
    }
    assert_host_clean(&n);
    assert_eq!(
        std::fs::read("/etc/hosts").unwrap(),
        hosts,
        "/etc/hosts changed"
    );
    assert_eq!(
        std::fs::read(Path::new("/etc").join(&f)).unwrap(),
        deleted,
        "/etc/{f} changed on the host"
    );
});

per_engine!(a_second_run_starts_clean, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let n = unique("c");
    let f = deletable_etc_file();
    let write = format!(
        "set -e; echo 1 > /etc/{n}; echo 1 > /usr/local/bin/{n}; mkdir -p /srv/{n}; rm /etc/{f}; echo wrote"
    );
    let o = run(e, ws.path(), &["sh", "-c", &write], None);
    assert_eq!(o.stdout_str(), "wrote\n", "{}", o.stderr);
    let check = format!(
        "set -e; test ! -e /etc/{n}; test ! -e /usr/local/bin/{n}; test ! -e /srv/{n}; test -f /etc/{f}; echo clean"
    );
    let o = run(e, ws.path(), &["sh", "-c", &check], None);
    assert_eq!(o.stdout_str(), "clean\n", "{}", o.stderr);
    assert_host_clean(&n);
    assert!(Path::new("/etc").join(&f).is_file());
});

per_engine!(read_only_root_on_request, |e: Engine| {
    let ws = hutch_e2e::workspace();
    let n = unique("r");
    let script =
        format!("touch /usr/local/bin/{n}; mkdir /srv; grep ' / ' /proc/mounts; echo ws > ws-file");
    let argv: Vec<&std::ffi::OsStr> = ["sh", "-c", &script]
        .into_iter()
        .map(std::ffi::OsStr::new)
        .collect();
    let mut args = hutch_e2e::run_args(e, ws.path(), &argv);
    args.splice(1..1, ["--kernel-arg".into(), "hutch.root=ro".into()]);
    let o = hutch_e2e::Hutch::new(args).output(None);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains(&format!("/usr/local/bin/{n}': Read-only file system")),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("Read-only file system"), "{}", o.stderr);
    assert!(!o.stdout_str().contains("overlay"), "{}", o.stdout_str());
    // The workspace stays writable.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("ws-file")).unwrap(),
        "ws\n"
    );
    assert_host_clean(&n);
});

per_engine!(pip_install_lands_in_the_guest, |e: Engine| {
    let has = |module: &str| {
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", &format!("import {module}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !(has("pip") && has("setuptools")) {
        hutch_e2e::report(
            "pip_install_lands_in_the_guest",
            "NOT TRIED: the host's /usr/bin/python3 lacks pip or setuptools",
        );
        return;
    }
    let ws = hutch_e2e::workspace();
    let n = unique("pip");
    let src = ws.path().join("pkg");
    std::fs::create_dir_all(src.join(&n)).unwrap();
    std::fs::write(
        src.join("setup.py"),
        format!(
            "from setuptools import setup\nsetup(name={n:?}, version='1.0', packages=[{n:?}])\n"
        ),
    )
    .unwrap();
    std::fs::write(src.join(&n).join("__init__.py"), "WHO = 'pip'\n").unwrap();
    // A system-wide install (into /usr/local/lib/python3.*/dist-packages, on
    // the overlay), offline, from a copy so the build leaves the workspace be.
    let script = format!(
        "set -e; cp -r pkg /tmp/pkg; cd /tmp/pkg; \
         /usr/bin/python3 -m pip install -q --no-index --no-build-isolation --break-system-packages . ; \
         cd /; /usr/bin/python3 -c 'import {n}; print({n}.WHO, {n}.__file__)'"
    );
    let o = run(e, ws.path(), &["sh", "-c", &script], None);
    let out = o.stdout_str();
    assert_eq!(o.status, 0, "{out}\n{}", o.stderr);
    let file = out
        .strip_prefix("pip /usr/local/lib/python3")
        .unwrap_or_else(|| panic!("not installed under /usr/local: {out}\n{}", o.stderr));
    let installed = format!("/usr/local/lib/python3{}", file.trim_end());
    assert!(
        !Path::new(&installed).exists(),
        "{installed} appeared on the host"
    );
    assert!(!ws.path().join("pkg/build").exists());
});
