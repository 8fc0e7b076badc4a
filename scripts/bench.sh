#!/usr/bin/env bash
# scored's benchmarks, one `cargo bench --bench NAME` each; their figures are in docs/evaluation.md.
# Heavy and slow on purpose, so they are not part of scripts/test.sh.
#
#   scripts/bench.sh                 # every benchmark that needs no root (about 10 minutes)
#   scripts/bench.sh --all           # and the ones that need root (capture, libvirt testbed)
#   scripts/bench.sh --list          # one line per benchmark: name, needs, time, what
#   scripts/bench.sh NAME…           # just these, e.g. `scripts/bench.sh p2p daemon_decision`
#   scripts/bench.sh NAME -- ARGS    # ARGS go to each benchmark (criterion's options for most):
#                                    # `scripts/bench.sh ops -- --warm-up-time 1 --measurement-time 3`
#
# The benchmarks are those declared in Cargo.toml (the workspace root's and its members'); TABLE
# below says which need root and roughly how long each runs once built. A benchmark that needs
# root skips itself without it; this script refuses to start one instead, so a run never
# reports a figure it did not measure. Exits non-zero when a benchmark fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# name | needs | time | what (times on the 2-core CI/dev machine, build not included)
TABLE='
sim_dc2560|-|~2.5 min|S-CORE on the 2,560-host data centre: 4 policies, each with group moves too, centralised baselines, c_m sweep
decide_partners|-|~30 s|one Eq. 3.2 decision with 10 / 100 / 1,000 partners (pure decide code)
ops|-|~20 s|one Prometheus scrape; parsing a full configuration
flow_table|-|~2 min|flow table: memory per flow, insert, update, λ(u,·), expiry at 1M entries
frame_parse|-|~1 min|per-frame capture path from memory: parse, attribute, account
p2p|-|~1 min|libp2p on loopback: token hand-off, token size and codec, location queries
daemon_decision|-|~2 min|one daemon decision among 16 daemons: in process and over loopback libp2p
daemon_idle|-|~1.5 min|idle CPU and RSS of a release daemon with 16 VMs x 100 partners
capture_load|root|~30 s|real capture on a veth in a network namespace: drops, CPU per million frames
hypervisor_calls|root|~3 min|libvirt reads on the token path, on the namespace testbed (1 and 8 guests)
migration|root|~7 min|80 live migrations on the namespace testbed: total time, downtime, bytes
'

die() { printf 'bench: %s\n' "$*" >&2; exit 2; }

# Every [[bench]] of the root Cargo.toml and of the members one directory down, as
# "name package required-features" (package "-" for the root; features comma-separated or "-").
declared() {
  local toml pkg
  for toml in Cargo.toml */Cargo.toml; do
    [ -f "$toml" ] || continue
    pkg=-
    [ "$toml" = Cargo.toml ] || pkg=$(awk -F'"' '/^\[package\]/{p=1; next} /^\[/{p=0} p && /^name *=/{print $2; exit}' "$toml")
    awk -v pkg="$pkg" '
      function flush() { if (name != "") print name, pkg, (feat == "" ? "-" : feat); name = ""; feat = "" }
      /^\[\[bench\]\]/ { flush(); inb = 1; next }
      /^\[/ { flush(); inb = 0; next }
      inb && /^name *=/ { split($0, a, "\""); name = a[2] }
      inb && /^required-features *=/ { f = $0; sub(/^[^[]*\[/, "", f); sub(/\].*$/, "", f); gsub(/[" ]/, "", f); feat = f }
      END { flush() }' "$toml"
  done
}

row() { printf '%s\n' "$TABLE" | awk -F'|' -v n="$1" '$1 == n'; }
field() { row "$1" | cut -d'|' -f"$2"; }

list() {
  local name _pkg _feat needs
  printf '%-17s %-5s %-9s %s\n' NAME NEEDS TIME WHAT
  while read -r name _pkg _feat; do
    if [ -z "$(row "$name")" ]; then
      printf '%-17s %-5s %-9s %s\n' "$name" '?' '?' '(declared in Cargo.toml, not described in scripts/bench.sh)'
      continue
    fi
    needs=$(field "$name" 2)
    printf '%-17s %-5s %-9s %s\n' "$name" "$needs" "$(field "$name" 3)" "$(field "$name" 4)"
  done < <(declared)
}

all=0
chosen=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list; exit 0 ;;
    --all) all=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option $1 (see scripts/bench.sh --help)" ;;
    *) chosen+=("$1") ;;
  esac
  shift
done

mapfile -t decl < <(declared)
[ ${#decl[@]} -gt 0 ] || die "no [[bench]] found in Cargo.toml"
known() { printf '%s\n' "${decl[@]}" | awk -v n="$1" '$1 == n'; }

# What to run, in the order Cargo.toml declares the benchmarks (or as named).
run=()
if [ ${#chosen[@]} -gt 0 ]; then
  [ $all -eq 0 ] || die "--all and benchmark names exclude each other"
  for name in "${chosen[@]}"; do
    [ -n "$(known "$name")" ] || die "no benchmark \`$name\` in Cargo.toml (scripts/bench.sh --list shows them)"
    run+=("$name")
  done
else
  for d in "${decl[@]}"; do
    name=${d%% *}
    [ -n "$(row "$name")" ] || die "benchmark \`$name\` is declared in Cargo.toml but not described in scripts/bench.sh: add it to TABLE"
    if [ "$(field "$name" 2)" = root ] && [ $all -eq 0 ]; then continue; fi
    run+=("$name")
  done
fi

for name in "${run[@]}"; do
  if [ "$(field "$name" 2)" = root ] && [ "$(id -u)" -ne 0 ]; then
    die "\`$name\` needs root (network namespaces, capture, libvirtd): run scripts/bench.sh as root, or leave it out"
  fi
done
command -v cargo >/dev/null || die "cargo is not on PATH (under sudo, PATH is reset: use sudo -E or run as root directly)"
if printf '%s\n' "${run[@]}" | grep -qx 'hypervisor_calls\|migration'; then
  ./scripts/install-deps.sh
fi

failed=()
started=$SECONDS
for name in "${run[@]}"; do
  read -r _ pkg feat < <(known "$name")
  args=(bench --locked --bench "$name")
  [ "$pkg" = - ] || args+=(-p "$pkg")
  [ "$feat" = - ] || args+=(--features "$feat")
  [ ${#extra[@]} -eq 0 ] || args+=(-- "${extra[@]}")
  printf '\n== %s (%s): cargo %s\n' "$name" "$(field "$name" 3)" "${args[*]}"
  t0=$SECONDS
  # capture_load runs only when asked, so a plain `cargo bench` never needs root.
  if env SCORED_CAPTURE_BENCH=1 cargo "${args[@]}"; then
    printf '== %s: done in %d s\n' "$name" $((SECONDS - t0))
  else
    printf '== %s: FAILED (exit %d) after %d s\n' "$name" "$?" $((SECONDS - t0)) >&2
    failed+=("$name")
  fi
done

summary=$(printf '%d benchmark(s) in %d s' "${#run[@]}" $((SECONDS - started)))
if [ ${#failed[@]} -gt 0 ]; then
  printf '\n== %s, %d failed: %s\n' "$summary" "${#failed[@]}" "${failed[*]}" >&2
  exit 1
fi
printf '\n== %s, all passed; the figures they stand for are in docs/evaluation.md\n' "$summary"
