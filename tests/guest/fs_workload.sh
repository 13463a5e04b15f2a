#!/bin/sh
# A small guest-side workload over the current directory, printing one line
# per phase: "<phase> <milliseconds>". Used to measure virtio-fs levers.
set -e
ms() { echo $(( $(date +%s%N) / 1000000 )); }
d=work.$$
mkdir "$d"
t=$(ms); dd if=/dev/zero of="$d/big" bs=1M count=64 2>/dev/null; sync; echo "write_64MiB $(( $(ms) - t ))"
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t=$(ms); cat "$d/big" > /dev/null; echo "read_64MiB $(( $(ms) - t ))"
t=$(ms); i=0; while [ $i -lt 1000 ]; do : > "$d/f$i"; i=$((i+1)); done; echo "create_1000 $(( $(ms) - t ))"
t=$(ms); i=0; while [ $i -lt 1000 ]; do [ -e "$d/f$i" ]; i=$((i+1)); done; echo "stat_1000 $(( $(ms) - t ))"
t=$(ms); i=0; while [ $i -lt 1000 ]; do [ -e "$d/missing$i" ] || true; i=$((i+1)); done; echo "stat_missing_1000 $(( $(ms) - t ))"
t=$(ms); ls -l "$d" > /dev/null; echo "readdir_1000 $(( $(ms) - t ))"
t=$(ms); rm -rf "$d"; echo "unlink_1000 $(( $(ms) - t ))"
