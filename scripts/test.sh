#!/usr/bin/env bash
# make test: every test but the VM's card/reader states (marker vm_states, `make vm-test`).
# By default one pytest run, tests/vm last (the VM image is built in a thread from the start: tests/support/vm_early.py).
# TOKENTRUST_TEST_LANES=2 runs two lanes at once, for a machine with cores to spare:
#   lane 1: tests/ but tests/vm, in this terminal, its 40 slowest tests at the end;
#   lane 2: tests/vm (one Debian 12 VM under QEMU: boot, site.yml twice, verify through the USB reader), started
#           first, beside lane 1, its output in lab/build/test-vm-lane.log and printed after lane 1.
# Lane 1 mostly waits on subprocesses (Ansible, Docker, Firefox: load ~1.3 on 2 cores) and the VM is mostly one core
# of QEMU's TCG, but on this 2-core kind of machine, with a second VM beside it, the emulated USB reader failed once
# mid-login (CKR_GENERAL_ERROR): not the default until it holds there. The lanes share nothing (the VM has its own
# folder, ports picked free, its own card; lane 1 never uses lab/vm.py). Exit status: non-zero when either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MARK="not vm_states"
mkdir -p lab/build
if [ "${TOKENTRUST_TEST_LANES:-1}" != 2 ]; then
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
