# tokentrust: the two commands of README, plus the pieces they are made of.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: setup demo test lint unit integration bench bench-fleet clean lab lab-destroy collection

setup:
	@bash scripts/setup.sh

demo: setup
	@$(BIN)/python scripts/demo.py

test: setup lint
	$(BIN)/pytest -q tests

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint -q

collection: setup
	$(BIN)/python scripts/build_collection.py

bench: setup
	$(BIN)/python bench/nss_apply.py

bench-fleet: setup
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/site.py

lab: setup
	$(BIN)/python -m lab.build create --hosts $${LAB_HOSTS:-5}

lab-destroy: setup
	$(BIN)/python -m lab.build destroy

clean:
	rm -rf .stamps .pytest_cache reports .demo
