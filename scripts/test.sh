#!/usr/bin/env bash
# make test: every test but the VM's card/reader states (marker vm_states, `make vm-test`), in two lanes at once.
#   lane 1, in this terminal: tests/unit, tests/integration (NSS, Firefox, the playbooks on folder labs, molecule
#           and the demo on their own container fleets);
#   lane 2, beside it, its output in lab/build/test-lane2.log and printed after lane 1: tests/fleet (the container
#           fleet), tests/vm (one Debian 12 VM under QEMU: boot, site.yml twice, verify through its USB reader; the VM
#           image is built in a thread from the lane's start, tests/support/vm_early.py), tests/controller (Debian 13
#           controller), tests/ee (execution environment), tests/collection (the built collection, sanity),
#           tests/hostile (what a user's code cannot make root do).
# Measured on a quiet 2-core machine (a clean clone, Docker images cached, the VM image cold): lane 1 36.5 min, lane 2
# 28.8 min with the image built in it, tests/hostile then in lane 1; with it in lane 2: 32.4 and 30.9 min, .ci/run
# 34.7 min (docs/lab.md).
# The lanes share nothing but Docker's images (each built once: lab/fleet.py's build_lock makes the second builder
# wait) and the machine: every fleet, lab and VM has its own folder and free ports. Each lane mostly waits on
# subprocesses (Ansible, Docker, Firefox, QEMU).
# The emulated USB reader is the one timing-sensitive part: lane 2 runs QEMU and the VSCard bridge at nice -5 when
# root (TOKENTRUST_VM_NICE; a loaded 2-core machine once saw a login fail mid-way through the reader without it).
# TOKENTRUST_TEST_LANES=1: one pytest run, one lane after the other's folders (the old way, slower).
# Exit status: non-zero when either lane failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MARK="not vm_states"
LANE2=(tests/fleet tests/vm tests/controller tests/ee tests/collection tests/hostile)
mkdir -p lab/build
if [ "${TOKENTRUST_TEST_LANES:-2}" = 1 ]; then
  exec "$BIN/pytest" -q tests -m "$MARK" --durations=40
fi
ignore=()
for d in "${LANE2[@]}"; do ignore+=("--ignore=$d"); done
if [ "$(id -u)" = 0 ] && [ -z "${TOKENTRUST_VM_NICE:-}" ]; then
  export TOKENTRUST_VM_NICE=-5
fi
log=lab/build/test-lane2.log
t0=$(date +%s)
"$BIN/pytest" -q "${LANE2[@]}" -m "$MARK" --durations=25 -p no:cacheprovider > "$log" 2>&1 < /dev/null &
lane2=$!
trap 'kill -- "$lane2" 2>/dev/null' INT TERM
echo "== make test: lane 2 (${LANE2[*]}) runs beside this one, its output in $log"
"$BIN/pytest" -q tests "${ignore[@]}" -m "$MARK" --durations=30
rc1=$?
echo "== lane 1 over after $(( $(date +%s) - t0 )) s (rc $rc1); waiting for lane 2 ($log)"
wait "$lane2"
rc2=$?
echo "== lane 2 (${LANE2[*]}), run beside lane 1: rc $rc2"
cat "$log"
echo "== make test: lane 1 rc $rc1, lane 2 rc $rc2, $(( $(date +%s) - t0 )) s in all"
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ]
