//! The generator end to end against hutch's backend served in this process: a few ops of
//! every phase, at depth 1 and 4.

use std::sync::Arc;
use std::time::Duration;

use hutch::devices::virtio::fs::{serve_vhost_user, FsDevice, ShareConfig, SharePolicy};

use crate::engine::run_phase;
use crate::fixture::{self, FixtureSpec, WORK_DIR};
use crate::open_target;
use crate::ops::{all_ops, Op};

const SPEC: FixtureSpec = FixtureSpec {
    files: 8,
    entries: 300,
    file_len: 1 << 20,
};

fn run_all(depth: usize) {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    fixture::make(&share, &SPEC).unwrap();
    let dev = FsDevice::new(ShareConfig {
        tag: "fsload-test".into(),
        source: share.clone(),
        policy: SharePolicy::Workspace,
    })
    .unwrap();
    let socket = dir.path().join("fs.sock");
    let handle = serve_vhost_user(Arc::new(dev), &socket).unwrap();

    let (mut s, mut ctx) = open_target(&socket, depth, &SPEC, None).unwrap();
    assert_eq!(s.init.max_io(), 1 << 20);
    assert!(
        ctx.no_open,
        "hutch answers OPEN with ENOSYS (zero-message open)"
    );
    let mut created = 0;
    for op in all_ops(4096, 1 << 20) {
        let st = run_phase(&mut s, &mut ctx, op, Duration::from_millis(15)).unwrap();
        if op == Op::OpenRelease && ctx.no_open {
            // hutch's default: zero-message open, nothing is sent for open + close.
            assert_eq!(st.count, 0);
            continue;
        }
        assert!(st.count > 0, "{} ran no op", op.name());
        assert!(
            st.ops_per_s > 0.0 && st.p50 > 0.0 && st.p50 <= st.p99,
            "{st:?}"
        );
        match op {
            Op::CreateRelease => created = st.count,
            Op::Rename | Op::Unlink => assert_eq!(st.count, created, "{}", op.name()),
            _ => {}
        }
    }
    let left = std::fs::read_dir(share.join(WORK_DIR)).unwrap().count();
    assert_eq!(left, 0, "create, rename and unlink leave work/ empty");
    assert!(std::fs::metadata(share.join("write.dat")).unwrap().len() == SPEC.file_len);
    drop((s, ctx));
    handle.join().unwrap();
}

#[test]
fn every_phase_runs_against_hutch_at_depth_1() {
    run_all(1);
}

#[test]
fn every_phase_runs_against_hutch_at_depth_4() {
    run_all(4);
}
