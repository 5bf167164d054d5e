"""Run tokentrust_provision.provision() in a process of its own (for concurrent-run and kill -9 tests).

    python -m tests.support.provision_runner '<json: {databases, certificates, module: {name, library}}>'

Prints the results as JSON on stdout.
"""
import json
import os
import sys

import ansible.module_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ansible.module_utils.__path__.append(os.path.join(ROOT, "module_utils"))

from ansible.module_utils.tokentrust_provision import (  # noqa: E402
    normalise_certificates,
    normalise_databases,
    provision,
)


def main():
    spec = json.loads(sys.argv[1])
    certs = normalise_certificates(spec["certificates"])
    mod = dict(spec["module"], state="present", missing_library="fail") if spec.get("module") else None
    extra = {"lock_timeout": spec["lock_timeout"]} if "lock_timeout" in spec else {}
    results, changed, failed, warnings = provision(normalise_databases(spec["databases"]), certs, mod, **extra)
    json.dump({"results": results, "changed": changed, "failed": failed, "warnings": warnings}, sys.stdout)


if __name__ == "__main__":
    main()
