#!/usr/bin/env bash
# Makes the file system benchmark's inputs once, in the directory given:
#   src.tar    part of the Linux 6.1 source (fs/), uncompressed
#   repo/      the same tree as a git repository with one commit
#   cproj/     a C project of 32 files and a Makefile
#   crates/    a cargo workspace of three small crates, no registry deps
#   npm.tar    a node_modules-style tree: 200 packages of 9 small files
#   big/       a directory of 10 000 empty files (for readdir)
# Usage: benches/fs/prepare.sh DIR
set -euo pipefail
out=${1:?usage: prepare.sh DIR}
[ -e "$out/.done" ] && exit 0
mkdir -p "$out"
cd "$out"
say() { printf 'fs bench: %s\n' "$*" >&2; }

src=/usr/src/linux-source-6.1.tar.xz
[ -r "$src" ] || { say "$src missing (Debian package linux-source-6.1)"; exit 1; }
say "extracting part of $src for the source tarball"
rm -rf stage && mkdir stage
tar -C stage -xJf "$src" linux-source-6.1/fs
tar -C stage -cf src.tar linux-source-6.1

say "making the git repository"
rm -rf repo && mv stage/linux-source-6.1 repo && rmdir stage
git -C repo init -q
git -C repo add -A
git -C repo -c user.name=bench -c user.email=bench@hutch.invalid commit -q -m tree

say "generating the C project"
rm -rf cproj && mkdir cproj
for i in $(seq 1 32); do
    {
        echo '#include <stdio.h>'
        echo '#include <string.h>'
        echo '#include "common.h"'
        for j in $(seq 1 10); do
            echo "int f${i}_${j}(const char *s) { int h = $j; while (*s) h = h * 31 + *s++; return h ^ COMMON_SALT; }"
        done
    } > "cproj/u$i.c"
done
echo '#define COMMON_SALT 0x5a5a' > cproj/common.h
{
    echo 'SRCS := $(wildcard u*.c)'
    echo 'OBJS := $(SRCS:.c=.o)'
    echo 'libu.a: $(OBJS)'
    printf '\tar rcs $@ $^\n'
    echo '%.o: %.c common.h'
    printf '\t$(CC) -O1 -c $< -o $@\n'
} > cproj/Makefile

say "generating the cargo workspace"
rm -rf crates && mkdir -p crates/{base,mid,app}/src
printf '[workspace]\nmembers = ["base", "mid", "app"]\nresolver = "2"\n' > crates/Cargo.toml
for c in base mid app; do
    printf '[package]\nname = "%s"\nversion = "0.1.0"\nedition = "2021"\n' "$c" > "crates/$c/Cargo.toml"
done
printf '[dependencies]\nbase = { path = "../base" }\n' >> crates/mid/Cargo.toml
printf '[dependencies]\nmid = { path = "../mid" }\n' >> crates/app/Cargo.toml
cat > crates/base/src/lib.rs <<'RS'
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(*b))
}
pub struct Table<T> { pub rows: Vec<T> }
impl<T: Clone> Table<T> { pub fn doubled(&self) -> Vec<T> { self.rows.iter().chain(&self.rows).cloned().collect() } }
RS
cat > crates/mid/src/lib.rs <<'RS'
pub fn digest(words: &[&str]) -> u32 { words.iter().map(|w| base::checksum(w.as_bytes())).sum() }
pub fn table() -> base::Table<String> { base::Table { rows: vec!["a".into(), "b".into()] } }
RS
cat > crates/app/src/main.rs <<'RS'
fn main() { println!("{} {}", mid::digest(&["hutch", "bench"]), mid::table().doubled().len()); }
RS

say "generating the node_modules-style tree"
rm -rf stage && mkdir -p stage/node_modules
for p in $(seq 1 200); do
    d=stage/node_modules/pkg-$p
    mkdir -p "$d/lib"
    printf '{"name":"pkg-%s","version":"1.0.%s","main":"index.js"}\n' "$p" "$p" > "$d/package.json"
    printf 'module.exports = require("./lib/a");\n' > "$d/index.js"
    for f in a b c d e; do printf 'exports.%s = function () { return %s; };\n' "$f" "$p" > "$d/lib/$f.js"; done
    printf '# pkg-%s\n' "$p" > "$d/README.md"
    printf 'MIT\n' > "$d/LICENSE"
done
tar -C stage -cf npm.tar node_modules
rm -rf stage

say "making a directory of 10000 files"
rm -rf big && mkdir big
(cd big && seq -f 'e%05g' 1 10000 | xargs touch)
touch .done
