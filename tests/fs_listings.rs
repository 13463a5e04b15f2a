//! Big listings, which the workspace reads ahead (`dir_prefetch`) and whose
//! names it looks up ahead for READDIRPLUS (`lookup_ahead`), both on by
//! default: a guest listing a directory and stat-ing every entry as it goes
//! (as `find`, `ls -l`, a build's scan do) gets each name's own attributes,
//! with the levers and without them.

use std::os::unix::fs::MetadataExt;

use hutch_e2e::{per_engine, Engine};

/// Files in the listed directory: about 14 READDIRPLUS answers of 32 KiB.
const FILES: usize = 3000;

/// Lists `d` with `os.scandir` and `lstat`s each name as it comes; prints
/// `name size inode` per file, sorted.
const SCRIPT: &str = r#"python3 - <<'EOF'
import os
rows = []
for e in os.scandir('d'):
    st = os.lstat('d/' + e.name)
    rows.append('%s %d %d' % (e.name, st.st_size, st.st_ino))
print('\n'.join(sorted(rows)))
EOF"#;

/// The workspace's "read ahead: N listing batches, M names looked up" line
/// of `--stats` (absent: none).
fn ahead(stderr: &str) -> (u64, u64) {
    let at = stderr
        .lines()
        .position(|l| l.contains("virtio-fs hutch-ws:"))
        .expect("workspace stats");
    let Some(line) = stderr
        .lines()
        .skip(at + 1)
        .take(3)
        .find(|l| l.trim_start().starts_with("read ahead:"))
    else {
        return (0, 0);
    };
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

per_engine!(
    a_listing_stated_as_it_goes_gives_each_name_its_own_attributes,
    |e: Engine| {
        let ws = hutch_e2e::workspace();
        let d = ws.path().join("d");
        std::fs::create_dir(&d).unwrap();
        for i in 0..FILES {
            // Sizes differ between neighbours: an entry shifted by one
            // name would show another file's size.
            std::fs::write(d.join(format!("file-{i:05}")), vec![b'x'; i % 997]).unwrap();
        }
        let mut want: Vec<String> = (0..FILES)
            .map(|i| {
                let name = format!("file-{i:05}");
                let ino = std::fs::metadata(d.join(&name)).unwrap().ino();
                format!("{name} {} {ino}", i % 997)
            })
            .collect();
        want.sort();
        let want = want.join("\n") + "\n";
        for levers in ["", "-lookup_ahead", "-dir_prefetch"] {
            let o = hutch_e2e::run_script_with_stats(e, ws.path(), SCRIPT, levers);
            assert_eq!(o.status, 0, "levers {levers:?}: {}", o.stderr);
            let got = o.stdout_str();
            let wrong = got
                .lines()
                .zip(want.lines())
                .filter(|(g, w)| g != w)
                .take(3)
                .collect::<Vec<_>>();
            assert!(
                got == want,
                "levers {levers:?}: {} lines against {}; first differences {wrong:?}",
                got.lines().count(),
                FILES
            );
            let ops = hutch_e2e::workspace_ops(&o.stderr);
            eprintln!("levers {levers:?}: workspace requests: {ops:?}");
            let n = |op: &str| ops.get(op).copied().unwrap_or(0);
            assert!(
                n("READDIRPLUS") >= 5,
                "the listing went by READDIRPLUS: {ops:?}"
            );
            assert!(
                n("LOOKUP") < 100,
                "the stats took no lookup per name: {ops:?}"
            );
            let (batches, names) = ahead(&o.stderr);
            eprintln!("levers {levers:?}: read ahead {batches} batches, {names} names");
            match levers {
                "" => assert!(names > FILES as u64 / 2, "looked up ahead: {names}"),
                "-lookup_ahead" => assert_eq!(names, 0),
                _ => assert_eq!((batches, names), (0, 0)),
            }
        }
    }
);
