#!/usr/bin/env bash
# The developer testbed: hypervisors as network namespaces, each with a private libvirtd, joined
# by bridges as a topology file says, and a tiny Debian-only guest image (see docs/operations.md).
#
#   scripts/testbed.sh up [--topology topology/testbed.toml | --hosts N] [--prefix sclv]
#   scripts/testbed.sh guest --host hv1 --name vm1 --ip 10.77.1.10 [--peer 10.77.1.11]
#   scripts/testbed.sh migrate --vm 10.77.1.10 --from hv1 --to hv2
#   scripts/testbed.sh status | down
#
# Needs root. Everything it starts lives in namespaces named <prefix>-*; `down` kills exactly
# those processes and deletes those namespaces, also after a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "testbed: needs root (network namespaces, bind mounts, libvirtd)" >&2
  exit 1
fi
./scripts/install-deps.sh
cargo build --release --quiet --bin scored
exec ./target/release/scored testbed "$@"
