#!/usr/bin/env bash
# Installs the Debian packages scored's build and tests need on a bare Debian 12 machine.
# Idempotent and quiet when everything is already there. Needs root (CI and dev machines are root).
set -euo pipefail

# Packages for building (pkg-config and libvirt-dev for the virt crate of the default `libvirt`
# feature; `cargo build --no-default-features` needs neither) and for the real-hypervisor tests.
PKGS=(pkg-config libvirt-dev libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu
      qemu-system-x86 iproute2 iputils-ping procps prometheus systemd cpio busybox-static
      tcpdump debootstrap systemd-container openssl)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# QEMU 7.2 (Debian 12) conflicts with the newer qemu-utils some images ship: pin qemu-utils to
# the 7.2 build that matches qemu-system-x86 (see docs/operations.md).
need_qemu_pin=0
if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -qv '^1:7\.2'; then need_qemu_pin=1; fi

if [ ${#missing[@]} -eq 0 ] && [ $need_qemu_pin -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}); run as root to install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing ${missing[*]} (qemu-utils pin: $need_qemu_pin)" >&2
apt-get update -qq >/dev/null
qemu_utils=()
if [ $need_qemu_pin -eq 1 ] || printf '%s\n' "${missing[@]}" | grep -q '^qemu-system-x86$'; then
  ver=$(apt-cache madison qemu-system-x86 | awk '$3 ~ /^1:7\.2/ {print $3; exit}')
  if [ -n "$ver" ] && apt-cache madison qemu-utils | awk '{print $3}' | grep -qx "$ver"; then
    qemu_utils=("qemu-utils=$ver")
  fi
fi
apt-get install -y -qq --allow-downgrades --no-install-recommends "${missing[@]}" "${qemu_utils[@]}" >/dev/null
