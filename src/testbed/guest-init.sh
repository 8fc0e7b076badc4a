#!/bin/busybox sh
# /init of the scored testbed guest (a busybox initramfs, nothing else).
#
# Reads its settings from the kernel command line:
#   sc_name=vm1            name printed in every heartbeat
#   sc_ip=10.77.1.10/16    address of eth0
#   sc_peers=a,b,c         partners to send traffic to (ICMP echo, so both directions flow)
#   sc_ping_size=1000      payload bytes per echo
#   sc_ping_interval=0.5   seconds between echoes to each partner
#   sc_traffic_secs=3600   traffic stops after this many seconds (bounded by design)
#   sc_dirty_mib=0         rewrite this many MiB of memory in a loop (non-converging migration tests)
#   sc_dirty_after=0       start rewriting after this many seconds of uptime
# and prints `hb <name> <boot-id> <n>` each second on the serial console, so a test can tell that
# the guest kept running across a live migration (n keeps counting, the boot id stays the same).

/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=90% tmpfs /tmp
exec >/dev/ttyS0 2>&1 </dev/null

for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_balloon; do
  insmod /lib/modules/$m.ko 2>/dev/null
done

NAME=guest IP= PEERS= SIZE=1000 INTERVAL=0.5 SECS=3600 DIRTY=0 DIRTY_AFTER=0
for kv in $(cat /proc/cmdline); do
  case "$kv" in
    sc_name=*) NAME=${kv#sc_name=} ;;
    sc_ip=*) IP=${kv#sc_ip=} ;;
    sc_peers=*) PEERS=$(echo "${kv#sc_peers=}" | tr ',' ' ') ;;
    sc_ping_size=*) SIZE=${kv#sc_ping_size=} ;;
    sc_ping_interval=*) INTERVAL=${kv#sc_ping_interval=} ;;
    sc_traffic_secs=*) SECS=${kv#sc_traffic_secs=} ;;
    sc_dirty_mib=*) DIRTY=${kv#sc_dirty_mib=} ;;
    sc_dirty_after=*) DIRTY_AFTER=${kv#sc_dirty_after=} ;;
  esac
done

BOOT=$(cat /proc/sys/kernel/random/uuid)
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
ip link set eth0 up
[ -n "$IP" ] && ip addr add "$IP" dev eth0
echo "scored-guest $NAME boot $BOOT ip ${IP:-none} peers ${PEERS:-none} dirty ${DIRTY}MiB"

for p in $PEERS; do
  ping -q -s "$SIZE" -i "$INTERVAL" -w "$SECS" "$p" >/dev/null 2>&1 &
done

if [ "$DIRTY" -gt 0 ]; then
  # Non-zero, never-repeating contents: QEMU sends zero pages almost for free, and libvirt's
  # dirty-rate sampling compares page contents, so a page rewritten with the bytes it held (or
  # alternating between two contents) reads as clean all or half of the time. Each rewrite
  # copies the set from a random source at the next 1 MiB offset: every page changes. The
  # source is made before the first heartbeat, so the guest's memory is settled once it beats.
  dd if=/dev/urandom of=/tmp/dirty-src bs=1M count=$((DIRTY + 8)) iflag=fullblock 2>/dev/null
  (
    sleep "$DIRTY_AFTER"
    i=0
    while :; do
      dd if=/tmp/dirty-src of=/tmp/dirty-dst bs=1M skip=$i count="$DIRTY" conv=notrunc 2>/dev/null
      i=$(((i + 1) % 8))
    done
  ) &
fi

n=0
while :; do
  echo "hb $NAME $BOOT $n"
  n=$((n + 1))
  sleep 1
done
