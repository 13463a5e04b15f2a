//! The workspace's own READDIR (dirs.rs) against PassthroughFs's.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::{Context, FileSystem, ROOT_ID};
use fuse_backend_rs::passthrough::{Config, PassthroughFs};

use crate::devices::virtio::fs::{DirStreams, PolicyFs};

type Fs = PolicyFs<PassthroughFs>;

fn workspace(root: &Path, fast: bool) -> Fs {
    let inner = PassthroughFs::new(Config {
        root_dir: root.to_str().unwrap().to_owned(),
        do_import: true,
        ..Default::default()
    })
    .unwrap();
    let mut fs = PolicyFs::passthrough(inner, true);
    if fast {
        fs = fs.with_dir_streams(DirStreams::new(root).unwrap());
    }
    fs.init(FsOptions::empty()).unwrap();
    fs
}

/// Every entry of `dir` (name → d_ino) in 512-byte READDIR chunks, following
/// the offsets the way the guest does.
fn list(fs: &Fs, dir: u64) -> BTreeMap<String, u64> {
    let ctx = Context::new();
    let (handle, _) = fs.opendir(&ctx, dir, 0).unwrap();
    let handle = handle.unwrap();
    let (mut out, mut offset) = (BTreeMap::new(), 0);
    let mut first_listed = None;
    loop {
        let mut got = 0;
        fs.readdir(&ctx, dir, handle, 512, offset, &mut |e| {
            let name = String::from_utf8(e.name.to_vec()).unwrap();
            first_listed.get_or_insert_with(|| name.clone());
            assert!(out.insert(name, e.ino).is_none(), "an entry came twice");
            offset = e.offset;
            got += 1;
            Ok(1)
        })
        .unwrap();
        if got == 0 {
            break;
        }
    }
    // A rewind (the guest's rewinddir) starts over from the first entry.
    let mut first = None;
    fs.readdir(&ctx, dir, handle, 512, 0, &mut |e| {
        first.get_or_insert_with(|| String::from_utf8(e.name.to_vec()).unwrap());
        Ok(1)
    })
    .unwrap();
    assert_eq!(first, first_listed, "a rewind starts from the first entry");
    fs.releasedir(&ctx, dir, 0, handle).unwrap();
    out
}

#[test]
fn fast_readdir_lists_what_the_host_has_with_host_inode_numbers() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    for i in 0..300 {
        fs::write(
            dir.path()
                .join(format!("sub/file-{i:03}-{}", "x".repeat(i % 40))),
            "",
        )
        .unwrap();
    }
    let fast = workspace(dir.path(), true);
    let slow = workspace(dir.path(), false);
    let sub = |fs: &Fs| fs.lookup(&Context::new(), ROOT_ID, c"sub").unwrap().inode;

    let (ctx, s) = (Context::new(), sub(&fast));
    let (h, _) = fast.opendir(&ctx, s, 0).unwrap();
    assert_eq!(
        fast.fast_dir_handles(),
        1,
        "the directory took the fast path"
    );
    fast.releasedir(&ctx, s, 0, h.unwrap()).unwrap();
    assert_eq!(fast.fast_dir_handles(), 0, "RELEASEDIR closes it");

    let got = list(&fast, s);
    assert_eq!(got.len(), 300);
    for (name, ino) in &got {
        let host = fs::symlink_metadata(dir.path().join("sub").join(name)).unwrap();
        assert_eq!(*ino, host.ino(), "{name}");
    }
    let names = |m: &BTreeMap<String, u64>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&list(&slow, sub(&slow))));
    // The share's root lists the same way.
    assert_eq!(list(&fast, ROOT_ID).keys().collect::<Vec<_>>(), ["sub"]);
}

#[test]
fn a_directory_swapped_for_a_symlink_stays_on_the_slow_path() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("host-secret"), "").unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    fs::write(dir.path().join("d/inside"), "").unwrap();
    let fs = workspace(dir.path(), true);
    let ctx = Context::new();
    let d = fs.lookup(&ctx, ROOT_ID, c"d").unwrap().inode;
    // The guest's inode is the old directory, now at "moved"; "d" is a
    // symlink out of the share. hutch must neither follow it nor list it.
    fs::rename(dir.path().join("d"), dir.path().join("moved")).unwrap();
    symlink(outside.path(), dir.path().join("d")).unwrap();
    let got = list(&fs, d);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["inside"]);
    // A directory deleted under an open handle cannot be reopened: slow path.
    let (h, _) = fs.opendir(&ctx, d, 0).unwrap();
    let before = fs.fast_dir_handles();
    fs::remove_file(dir.path().join("moved/inside")).unwrap();
    fs::remove_dir(dir.path().join("moved")).unwrap();
    let (h2, _) = fs.opendir(&ctx, d, 0).unwrap();
    assert_eq!(
        fs.fast_dir_handles(),
        before,
        "a deleted directory is not reopened"
    );
    for h in [h, h2] {
        fs.releasedir(&ctx, d, 0, h.unwrap()).unwrap();
    }
}
