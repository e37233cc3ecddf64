#!/usr/bin/env bash
# which nested-sandbox options let CUDA initialise
export PATH="$PWD/.bw/usr/bin:$PATH"
[ -d .bw ] || dpkg -x .deb/*.deb "$PWD/.bw"
DEVS=""; for d in /dev/nvidia*; do [ -e "$d" ] && DEVS="$DEVS --dev-bind $d $d"; done
OUTER="bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --unshare-net --unshare-pid --unshare-ipc --die-with-parent --new-session $DEVS"
PY='import torch; torch.cuda.init(); print("cuda ok", torch.cuda.device_count())'
try() { echo "== $1"; $OUTER bash -c "$2 python3 -c '$PY' 2>&1 | tail -1"; }
try "outer only" ""
try "inner plain" "bwrap --ro-bind / / --dev-bind /dev /dev --die-with-parent"
try "inner unshare-pid" "bwrap --ro-bind / / --dev-bind /dev /dev --unshare-pid --die-with-parent"
try "inner tmpfs proc1" "bwrap --ro-bind / / --dev-bind /dev /dev --tmpfs /proc/1 --die-with-parent"
try "inner unshare-pid+proc" "bwrap --ro-bind / / --dev-bind /dev /dev --unshare-pid --proc /proc --die-with-parent"
try "inner unshare-user only" "bwrap --ro-bind / / --dev-bind /dev /dev --unshare-user --die-with-parent"
