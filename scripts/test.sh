#!/usr/bin/env bash
# make test: every test but the VM's card/reader states (marker vm_states, `make vm-test`), in two lanes at once.
#   lane 1: tests/ but tests/vm, in this terminal, its 40 slowest tests at the end;
#   lane 2: tests/vm (one Debian 12 VM under QEMU: image, boot, site.yml twice, verify through the USB reader),
#           started first, beside lane 1, its output in lab/build/test-vm-lane.log and printed after lane 1.
# Why: lane 1 mostly waits on subprocesses (Ansible, Docker, Firefox: load ~1.3 on 2 cores), and the VM's ~10 min
# are mostly one core of QEMU's TCG: run one after the other they were 56 min of a CI run. The lanes share nothing
# (the VM has its own folder, ports picked free, its own card; lane 1 never uses lab/vm.py).
# TOKENTRUST_TEST_LANES=1 runs them one after the other. Exit status: non-zero when either lane failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MARK="not vm_states"
mkdir -p lab/build
if [ "${TOKENTRUST_TEST_LANES:-2}" = 1 ]; then
  exec "$BIN/pytest" -q tests -m "$MARK" --durations=40
fi
log=lab/build/test-vm-lane.log
t0=$(date +%s)
"$BIN/pytest" -q tests/vm -m "$MARK" --durations=10 -p no:cacheprovider > "$log" 2>&1 < /dev/null &
vm_pid=$!
trap 'kill -- "$vm_pid" 2>/dev/null' INT TERM
"$BIN/pytest" -q tests --ignore=tests/vm -m "$MARK" --durations=40
rc1=$?
echo "== lane 1 over after $(( $(date +%s) - t0 )) s; waiting for the VM lane (tests/vm, $log)"
wait "$vm_pid"
rc2=$?
echo "== the VM lane (tests/vm), run beside lane 1: rc $rc2"
cat "$log"
echo "== make test: lane 1 rc $rc1, VM lane rc $rc2, $(( $(date +%s) - t0 )) s in all"
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ]
