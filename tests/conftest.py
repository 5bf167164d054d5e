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
