# tokentrust: the two commands of README, plus the pieces they are made of.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: setup demo demo-local test lint unit integration fleet-tests bench bench-fleet bench-ssh clean lab lab-destroy \
	fleet fleet-destroy collection ffi sanity changelog controller ee vm vm-destroy vm-test

setup:
	@bash scripts/setup.sh

# The fleet: Debian 12 workstation containers over SSH (needs Docker: setup installs and starts it).
demo: setup
	@DEMO_MODE=fleet $(BIN)/python scripts/demo.py

# The folder lab: homes on this machine, connection local (fast, no Docker).
demo-local: setup
	@DEMO_MODE=local $(BIN)/python scripts/demo.py

# Every test, the Debian 13 controller's (tests/controller) and the execution environment's (tests/ee) included: their
# images are built once per recipe, from the one Debian 13 base (both cold here: 7 min, 27 min under a 50-host bench).
# The VM (tests/vm, lab/vm.py) is in: one Debian 12 VM booted, site.yml twice, verify.yml through its USB reader; its
# card/reader state tests (marker vm_states, ~15 min under TCG) are left to `make vm-test`. scripts/test.sh runs two
# lanes at once (the containers, the VM, the controller, the EE and the collection beside the rest; TOKENTRUST_TEST_LANES=1:
# one pytest run).
test: setup lint
	@bash scripts/test.sh

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint -q
	cd collection && $(CURDIR)/$(BIN)/antsibull-changelog lint   # the fragments (their history: tests/unit)

collection: setup
	$(BIN)/python scripts/build_collection.py

# ansible-test sanity in full on the built collection (its environments cached in .cache/ansible-test).
sanity: setup
	$(BIN)/python scripts/sanity.py

# Release galaxy.yml's version: collection/changelogs/fragments -> changelog.yaml + CHANGELOG.md (antsibull-changelog).
changelog: setup
	$(BIN)/python scripts/changelog.py

# The Debian 13 controller image (lab/controller.py; built once per recipe), then its tests (tests/controller/).
controller: setup
	$(BIN)/python -m lab.controller image
	$(BIN)/pytest -q tests/controller

# The execution environment (execution-environment.yml, lab/ee.py): ansible-builder on the Debian 13 base built here,
# tagged by a hash of its inputs (built once). Its tests (site.yml and report.yml run inside it): tests/ee/.
ee: setup
	$(BIN)/python -m lab.ee image

# After changing a cffi declaration in module_utils/tokentrust_nss/_ffi.py: regenerate its pre-parsed form.
ffi: setup
	$(BIN)/python scripts/gen_nss_ffi.py

bench: setup
	$(BIN)/python bench/nss_apply.py

bench-fleet: setup
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/site.py

# The same two benches on the container fleet, over SSH.
bench-ssh: setup
	$(BIN)/python bench/fleet.py --fleet $${FLEET_HOSTS:-20}
	$(BIN)/python bench/site.py --fleet $${FLEET_HOSTS:-20}

fleet-tests: setup
	$(BIN)/pytest -q -m fleet tests

lab: setup
	$(BIN)/python -m lab.build create --hosts $${LAB_HOSTS:-5}

lab-destroy: setup
	$(BIN)/python -m lab.build destroy

fleet: setup
	$(BIN)/python -m lab.fleet create --hosts $${FLEET_HOSTS:-5}

fleet-destroy: setup
	$(BIN)/python -m lab.fleet destroy

# The VM lab (lab/vm.py, docs/lab.md): a Debian 12 QEMU workstation (systemd, logind seat, USB CCID reader), Debian 13
# with TOKENTRUST_VM_SUITE=trixie; each image is built once per recipe into .cache/vm/. vm-test: molecule's vm
# scenario (create, converge, idempotence, verify, destroy), then the VM tests (tests/vm: the card and reader states
# made in the VM), on Debian 12 then on Debian 13.
vm: setup
	$(BIN)/python -m lab.vm create

vm-destroy: setup
	$(BIN)/python -m lab.vm destroy

vm-test: setup
	set -e; for suite in bookworm trixie; do \
	  TOKENTRUST_VM_SUITE=$$suite $(BIN)/molecule test -s vm; \
	  TOKENTRUST_VM_SUITE=$$suite $(BIN)/pytest -q -m vm tests/vm; \
	done

clean:
	rm -rf .stamps .pytest_cache reports .demo
