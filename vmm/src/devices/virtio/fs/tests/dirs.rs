//! The workspace's own READDIR (dirs.rs) against PassthroughFs's.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::{Context, FileSystem, ROOT_ID};
use fuse_backend_rs::passthrough::PassthroughFs;

use crate::devices::virtio::fs::{DirStreams, PolicyFs};

type Fs = PolicyFs<PassthroughFs>;

fn workspace(root: &Path, fast: bool) -> Fs {
    let inner = super::passthrough(root);
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

    // Every name, "." and ".." too, as the host lists them.
    let got = list(&fast, s);
    assert_eq!(got.len(), 302);
    for (name, ino) in &got {
        let host = fs::symlink_metadata(dir.path().join("sub").join(name)).unwrap();
        assert_eq!(*ino, host.ino(), "{name}");
    }
    // PassthroughFs's own READDIR (the fallback) leaves the two out.
    let names = |m: &BTreeMap<String, u64>| {
        m.keys()
            .filter(|n| *n != "." && *n != "..")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&got), names(&list(&slow, sub(&slow))));
    // The share's root lists the same way.
    assert_eq!(
        list(&fast, ROOT_ID).keys().collect::<Vec<_>>(),
        [".", "..", "sub"]
    );
}

#[test]
fn readdirplus_reads_the_same_listing_with_entries() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..60 {
        fs::write(dir.path().join(format!("f{i:02}")), "").unwrap();
    }
    fs::create_dir(dir.path().join("sub")).unwrap();
    let fs = workspace(dir.path(), true);
    let ctx = Context::new();
    let (h, _) = fs.opendir(&ctx, ROOT_ID, 0).unwrap();
    let h = h.unwrap();
    // Chunks alternate between READDIRPLUS and READDIR, as the guest's do
    // (READDIRPLUS at offset 0 and after it sees entries stat'ed).
    let (mut names, mut offset, mut plus) = (Vec::new(), 0, true);
    loop {
        let before = names.len();
        if plus {
            fs.readdirplus(&ctx, ROOT_ID, h, 512, offset, &mut |d, e| {
                let name = String::from_utf8(d.name.to_vec()).unwrap();
                if name == "." || name == ".." {
                    assert_eq!(e.inode, 0, "{name} is sent without a node");
                } else {
                    let host = fs::symlink_metadata(dir.path().join(&name)).unwrap();
                    assert_ne!(e.inode, 0, "{name}");
                    assert_eq!((e.attr.st_ino, d.ino), (host.ino(), host.ino()), "{name}");
                }
                names.push(name);
                offset = d.offset;
                Ok(1)
            })
            .unwrap();
        } else {
            fs.readdir(&ctx, ROOT_ID, h, 512, offset, &mut |d| {
                names.push(String::from_utf8(d.name.to_vec()).unwrap());
                offset = d.offset;
                Ok(1)
            })
            .unwrap();
        }
        if names.len() == before {
            break;
        }
        plus = !plus;
    }
    names.sort();
    let mut want: Vec<String> = [".", "..", "sub"].map(String::from).into();
    want.extend((0..60).map(|i| format!("f{i:02}")));
    want.sort();
    assert_eq!(names, want, "each name once, whichever request listed it");

    // A full reply: the entry that did not fit is given back and comes
    // first in the next chunk; a name removed on the host since the
    // directory was read is left out.
    let mut first = Vec::new();
    fs.readdirplus(&ctx, ROOT_ID, h, 4096, 0, &mut |d, _| {
        if first.len() == 3 {
            return Ok(0);
        }
        first.push(String::from_utf8(d.name.to_vec()).unwrap());
        offset = d.offset;
        Ok(1)
    })
    .unwrap();
    let victim = (0..60)
        .map(|i| format!("f{i:02}"))
        .find(|n| !first.contains(n))
        .unwrap();
    fs::remove_file(dir.path().join(&victim)).unwrap();
    let mut rest = Vec::new();
    fs.readdirplus(&ctx, ROOT_ID, h, 65536, offset, &mut |d, _| {
        rest.push(String::from_utf8(d.name.to_vec()).unwrap());
        Ok(1)
    })
    .unwrap();
    assert_eq!(first.len() + rest.len(), 62, "{first:?} {rest:?}");
    assert!(!rest.contains(&victim) && !first.iter().any(|n| rest.contains(n)));
    fs.releasedir(&ctx, ROOT_ID, 0, h).unwrap();
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
    let names: Vec<_> = got.keys().filter(|n| *n != "." && *n != "..").collect();
    assert_eq!(names, ["inside"]);
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
