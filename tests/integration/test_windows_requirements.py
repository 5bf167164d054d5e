"""What the Windows side needs from the controller: collections (requirements.yml) against the
`version_added` of every module and option the roles use (ansible-doc of the installed collection), the
WinRM transports of the example inventory against pywinrm's extras, and the execution environment built
by the real `ansible-builder create`."""
import json
import os
import re
import subprocess
import sys

import yaml

from tests.support.winsim import ROOT, ansible_doc
from tests.support.winsim.checker import module_calls

BIN = os.path.dirname(sys.executable)


def _v(text):
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _needed_versions():
    calls = module_calls()
    docs = ansible_doc(tuple(sorted({c[2] for c in calls})))
    need = {}
    for _, _, fqcn, args in calls:
        coll = fqcn.rsplit(".", 1)[0]
        doc = docs[fqcn]
        found = [("module " + fqcn, doc.get("version_added"), doc.get("version_added_collection"))]
        for a in args:
            o = doc["options"].get(a) or next(v for v in doc["options"].values() if a in (v.get("aliases") or []))
            found.append((f"{fqcn} option {a}", o.get("version_added"), o.get("version_added_collection")))
        for what, va, vc in found:
            if va and vc == coll and va != "historical" and _v(va) > need.get(coll, ((0,), ""))[0]:
                need[coll] = (_v(va), what)
            need.setdefault(coll, ((0,), "any"))
    return need


def test_requirements_yml_asks_for_what_the_roles_use():
    with open(os.path.join(ROOT, "requirements.yml"), encoding="utf-8") as f:
        listed = {c["name"]: c.get("version", "") for c in yaml.safe_load(f)["collections"]}
    need = _needed_versions()
    assert set(listed) == set(need), f"listed {sorted(listed)}, used by the Windows roles {sorted(need)}"
    for coll, (version, what) in need.items():
        m = re.match(r"^>=\s*([\d.]+)", listed[coll])
        assert m, f"{coll}: give a lower bound (>=x.y.z), got {listed[coll]!r}"
        assert _v(m.group(1)) >= version, f"{coll} {listed[coll]} is too old for {what} (added in {version})"
    assert need["ansible.windows"][0] == (2, 8, 0)  # win_package checksum, the newest thing used


def _inventory():
    p = subprocess.run([os.path.join(BIN, "ansible-inventory"), "-i", "inventories/example", "--list"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg")))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_example_inventory_transports_are_installed_and_the_msi_source_reachable():
    from plugin_utils import tokentrust_windows as tw  # noqa: PLC0415

    inv = _inventory()
    hostvars = inv["_meta"]["hostvars"]
    windows = inv["windows"]["hosts"] + [h for c in inv["windows"].get("children", []) for h in inv[c]["hosts"]]
    transports = {hostvars[h]["ansible_winrm_transport"] for h in windows}
    assert transports >= {"ntlm", "kerberos"}
    with open(os.path.join(ROOT, "execution-environment.yml"), encoding="utf-8") as f:
        ee = yaml.safe_load(f)
    pywinrm = next(p for p in ee["dependencies"]["python"] if p.startswith("pywinrm"))
    extras = set(re.search(r"\[(.*)\]", pywinrm).group(1).split(","))
    assert transports - {"ntlm", "basic", "certificate"} <= extras, (transports, pywinrm)
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        req = re.search(r"^pywinrm\[(.*)\]==", f.read(), re.M)
    assert req and transports - {"ntlm", "basic", "certificate"} <= set(req.group(1).split(",")), req
    import winrm.transport

    # the controller's venv can really use them (pywinrm checks for the libraries at import)
    assert winrm.transport.HAVE_KERBEROS and winrm.transport.HAVE_CREDSSP
    for h in windows:
        v = hostvars[h]
        assert tw.msi_second_hop(v["token_middleware_msi_src"], v["ansible_winrm_transport"],
                                 v.get("ansible_winrm_kerberos_delegation", False)) is None, h


def test_execution_environment_builds_with_ansible_builder(tmp_path):
    ctx = tmp_path / "context"
    cmd = [os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", str(ctx)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    build = ctx / "_build"
    pip = (build / "requirements.txt").read_text()
    system = (build / "bindep.txt").read_text()
    assert "pywinrm[kerberos,credssp]==0.5.0" in pip and "cryptography==" in pip
    assert "cffi" not in pip  # NSS bindings run on the targets, not on the controller
    assert not re.search(r"\bnss\b|nss-tools|libnss3", system), system
    galaxy = [c["name"] for c in yaml.safe_load((build / "requirements.yml").read_text())["collections"]]
    # ansible.windows: from Galaxy, or (make ee: no Galaxy here) the file lab/ee.py takes from the `ansible` release
    assert "ansible.windows" in galaxy or "collections/ansible-windows.tar.gz" in galaxy, galaxy
    containerfile = next(f for f in ctx.iterdir() if f.name in ("Containerfile", "Dockerfile")).read_text()
    base = re.search(r'ARG EE_BASE_IMAGE="([^"]+)"', containerfile).group(1)
    assert re.search(r":[\w.-]+$", base), base
    # the pins match the controller's requirements.txt
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        pins = dict(re.findall(r"^([\w.-]+)(?:\[[\w,]+\])?==(\S+)", f.read(), re.M))
    for line in pip.split():
        m = re.match(r"^([\w.-]+)(?:\[[\w,]+\])?==(\S+)", line)
        if m:
            assert pins.get(m.group(1)) == m.group(2), line
