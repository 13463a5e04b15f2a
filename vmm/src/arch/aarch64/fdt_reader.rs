//! A minimal flattened-device-tree reader for tests: vm-fdt only writes.

use std::collections::BTreeMap;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// One parsed node.
#[derive(Debug, Default)]
pub struct Node {
    pub name: String,
    pub props: BTreeMap<String, Vec<u8>>,
    pub children: Vec<Node>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

fn cstr(b: &[u8], off: usize) -> String {
    let end = off + b[off..].iter().position(|&c| c == 0).expect("NUL");
    String::from_utf8(b[off..end].to_vec()).expect("UTF-8 name")
}

/// Parses `blob`, panicking on anything malformed.
pub fn parse(blob: &[u8]) -> Node {
    assert_eq!(be32(blob, 0), FDT_MAGIC, "magic");
    assert_eq!(be32(blob, 4) as usize, blob.len(), "totalsize");
    let off_struct = be32(blob, 8) as usize;
    let off_strings = be32(blob, 12) as usize;
    assert!(be32(blob, 20) >= 16, "version");
    let mut pos = off_struct;
    let mut stack: Vec<Node> = Vec::new();
    let mut root = None;
    loop {
        let token = be32(blob, pos);
        pos += 4;
        match token {
            FDT_BEGIN_NODE => {
                let name = cstr(blob, pos);
                pos = (pos + name.len() + 1 + 3) & !3;
                stack.push(Node {
                    name,
                    ..Default::default()
                });
            }
            FDT_END_NODE => {
                let node = stack.pop().expect("balanced nodes");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            FDT_PROP => {
                let len = be32(blob, pos) as usize;
                let name = cstr(blob, off_strings + be32(blob, pos + 4) as usize);
                let value = blob[pos + 8..pos + 8 + len].to_vec();
                pos = (pos + 8 + len + 3) & !3;
                let node = stack.last_mut().expect("property inside a node");
                assert!(
                    node.props.insert(name, value).is_none(),
                    "duplicate property"
                );
            }
            FDT_NOP => {}
            FDT_END => break,
            t => panic!("bad token {t:#x} at {pos:#x}"),
        }
    }
    assert!(stack.is_empty());
    root.expect("a root node")
}

impl Node {
    /// The node at `path` ("/cpus/cpu@0"), if any.
    pub fn at(&self, path: &str) -> Option<&Node> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .try_fold(self, |n, part| n.children.iter().find(|c| c.name == part))
    }

    /// A property's raw bytes; panics if absent.
    pub fn prop(&self, name: &str) -> &[u8] {
        self.props
            .get(name)
            .unwrap_or_else(|| panic!("{} has no property {name}", self.name))
    }

    /// Whether the property exists.
    pub fn has(&self, name: &str) -> bool {
        self.props.contains_key(name)
    }

    /// A string-list property.
    pub fn strings(&self, name: &str) -> Vec<String> {
        let v = self.prop(name);
        assert_eq!(v.last(), Some(&0), "{name} is NUL-terminated");
        v[..v.len() - 1]
            .split(|&c| c == 0)
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect()
    }

    /// A single-string property.
    pub fn string(&self, name: &str) -> String {
        let s = self.strings(name);
        assert_eq!(s.len(), 1, "{name} is one string");
        s[0].clone()
    }

    /// A property as 32-bit cells.
    pub fn u32s(&self, name: &str) -> Vec<u32> {
        let v = self.prop(name);
        assert_eq!(v.len() % 4, 0);
        v.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// A property as 64-bit values (pairs of cells).
    pub fn u64s(&self, name: &str) -> Vec<u64> {
        let v = self.prop(name);
        assert_eq!(v.len() % 8, 0);
        v.chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// A one-cell property.
    pub fn u32(&self, name: &str) -> u32 {
        let v = self.u32s(name);
        assert_eq!(v.len(), 1, "{name} is one cell");
        v[0]
    }
}
