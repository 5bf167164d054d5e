"""Shared test set-up: make our module_utils importable as `ansible.module_utils.*`, as Ansible does."""
import os
import sys

import ansible.module_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_UTILS = os.path.join(ROOT, "module_utils")
if MODULE_UTILS not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(MODULE_UTILS)
for p in (ROOT, os.path.join(ROOT, "library")):
    if p not in sys.path:
        sys.path.insert(0, p)


def pytest_collection_finish(session):
    """A session with VM tests starts the VM image build now, beside the other tests (tests/support/vm_early.py)."""
    if session.config.option.collectonly:
        return
    from tests.support import vm_early  # noqa: PLC0415 - lab.vm only for sessions that run VM tests

    if vm_early.wanted(session.items):
        vm_early.start()


def pytest_sessionfinish(session):
    """Never leave an image build half done (its chroot mounts) behind an early end of the session."""
    mod = sys.modules.get("tests.support.vm_early")
    if mod is not None:
        mod.wait()
