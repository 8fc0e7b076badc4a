#!/usr/bin/env bash
# The demo: S-CORE on real libvirt hypervisors. Builds the thesis testbed (4 hosts in network
# namespaces: hv1+hv2 in tor1, hv3 in tor2 under agg1, hv4 in tor3 under agg2), starts 8 small
# guests whose chatty pairs start on different racks, runs scored on every host and shows live
# what happens: the token moving, decisions with their Eq. 3.2 figures, migrations with their
# downtime, the total cost of the captured traffic falling. Ends with a before/after summary
# and tears everything down (also on Ctrl-C or failure).
#
#   scripts/demo.sh            # as root; without root it runs `scored sim` instead
#
# Everything lives in namespaces named scdemo-*; logs stay in /var/lib/scored-testbed/scdemo.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: not root, so no network namespaces or libvirtd: running the simulator on"
  echo "demo: topology/testbed.toml instead (scripts/demo.sh as root runs the real testbed)."
  # The simulator with its figures needs no libvirt: build without it, so this works on a
  # machine without libvirt-dev.
  cargo build --release --quiet --no-default-features --features plot --bin scored
  out=$(mktemp -d)
  ./target/release/scored sim --topology topology/testbed.toml --rounds 3 --sweep none --out "$out"
  echo "demo: figures and CSV files in $out"
  exit 0
fi

./scripts/install-deps.sh
cargo build --release --quiet --bin scored
scored=./target/release/scored
place=(--prefix scdemo --dir /var/lib/scored-testbed/scdemo)
cleanup() { "$scored" testbed down "${place[@]}" || true; }
trap cleanup EXIT

echo "== building the testbed (4 hypervisors, a private libvirtd each)"
"$scored" testbed up --topology topology/testbed.toml "${place[@]}"

# Four chatty pairs, none starting in one rack: vm1-vm2 and vm5-vm6 across agg1 (tor1-tor2),
# vm3-vm4 and vm7-vm8 across the core (tor1-tor3). Guests echo 1000-byte packets to their
# partner twice a second and are otherwise idle.
guest() { "$scored" testbed guest "${place[@]}" --host "$1" --name "$2" --ip "10.77.1.$3" --peer "10.77.1.$4"; }
echo "== starting 8 guests (128 MiB each)"
guest hv1 vm1 1 2; guest hv3 vm2 2 1
guest hv1 vm3 3 4; guest hv4 vm4 4 3
guest hv2 vm5 5 6; guest hv3 vm6 6 5
guest hv2 vm7 7 8; guest hv4 vm8 8 7
sleep 5

echo "== starting scored on every host"
"$scored" testbed daemons "${place[@]}"
"$scored" testbed watch "${place[@]}" --secs 240 --settle-secs 30
