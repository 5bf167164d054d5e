"""The tokentrust.workstation collection: built by scripts/build_collection.py (`make collection`), installed
with `ansible-galaxy collection install` into a clean temporary path, and used from there only: no
ansible.cfg of this repository, no ANSIBLE_LIBRARY / ANSIBLE_MODULE_UTILS / roles_path pointing at it.
The NSS state written by the installed modules is checked with certutil, not with our bindings."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml
from ansible.module_utils.tokentrust_facts import ca_file_stem

from lab.pki import certeurope_standin
from tests.collection.build import build_collection
from tests.support.nsstools import certutil_list

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
NS, NAME = "tokentrust", "workstation"
FQ = f"{NS}.{NAME}"
REPO_MODULES = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "library")) if n.endswith(".py"))
REPO_ROLES = sorted(n for n in os.listdir(os.path.join(ROOT, "roles")) if not n.startswith("."))


def clean_env(home, collections):
    """Only the temporary collection path; nothing of this repository's configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    cfg = home / "ansible.cfg"
    cfg.write_text("[defaults]\ninterpreter_python = auto_silent\n")
    env.update(ANSIBLE_CONFIG=str(cfg), ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOME=str(home / ".ansible"), ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
               PATH=BIN + os.pathsep + env.get("PATH", ""))
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_collection(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    tarball, _tree = built
    home = tmp_path_factory.mktemp("home")
    colls = home / "collections"
    env = clean_env(home, colls)
    # --no-deps: ansible.windows comes with the `ansible` package here; tests never reach the internet
    p = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--no-deps", "-p", str(colls),
                        tarball], cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return home, colls, env


def test_tarball_holds_every_module_role_and_the_filters(built):
    tarball, _ = built
    with tarfile.open(tarball) as t:
        names = set(t.getnames())
        manifest = json.load(t.extractfile("MANIFEST.json"))
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"]) == (NS, NAME)
    with open(os.path.join(ROOT, "collection", "galaxy.yml"), encoding="utf-8") as f:
        assert info["version"] == yaml.safe_load(f)["version"]
    for m in REPO_MODULES:
        assert f"plugins/modules/{m}.py" in names
        if os.path.exists(os.path.join(ROOT, "library", m + ".ps1")):  # our PowerShell modules: .ps1 + docs .py
            assert f"plugins/modules/{m}.ps1" in names, m
    assert sum(n.endswith(".ps1") for n in names if n.startswith("plugins/modules/")) == 8
    for r in REPO_ROLES:
        assert f"roles/{r}/tasks/main.yml" in names or f"roles/{r}/tasks" in names, r
    assert "plugins/filter/tokentrust.py" in names
    assert "plugins/module_utils/tokentrust_nss/database.py" in names
    assert "playbooks/site.yml" in names and "playbooks/lab.yml" not in names
    assert "meta/runtime.yml" in names


def test_installed_modules_render_with_ansible_doc(installed):
    home, colls, env = installed
    p = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "module", "-l", FQ], cwd=home, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    listed = sorted(line.split()[0][len(FQ) + 1:] for line in p.stdout.splitlines() if line.startswith(FQ + "."))
    assert listed == REPO_MODULES
    p = subprocess.run([os.path.join(BIN, "ansible-doc"), "--json"] + [f"{FQ}.{m}" for m in REPO_MODULES],
                       cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    docs = json.loads(p.stdout)
    for m in REPO_MODULES:
        doc = docs[f"{FQ}.{m}"]
        assert doc["doc"]["module"] == m and doc["examples"] and doc["return"] is not None, m
        assert f"{FQ}.{m}:" in doc["examples"], f"EXAMPLES of {m} do not call it by FQCN"
    # the shared options come from the collection's doc fragment (doc_fragments/tokentrust_nss.py)
    for m, shared in (("nss_certificate", {"backup", "password", "nickname_conflict"}),
                      ("nss_provision", {"backup", "password", "nickname_conflict"}),
                      ("nss_pkcs11_module", {"backup"})):
        assert shared <= set(docs[f"{FQ}.{m}"]["doc"]["options"]), m
        source = docs[f"{FQ}.{m}"]["doc"]["filename"]
        assert source.startswith(str(colls)) and f"  - {FQ}.tokentrust_nss\n" in open(source).read(), m


def test_installed_playbooks_resolve_every_role_module_and_filter_by_fqcn(installed):
    """--syntax-check loads every play, role, task action and import_playbook of the collection's own
    playbooks: a short module or role name has nothing to resolve to in a clean path and fails here."""
    home, _colls, env = installed
    inv = home / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    localhost: {ansible_connection: local}\n")
    for pb in ("site", "report", "token_pin", "verify"):
        p = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", str(inv), "--syntax-check", f"{FQ}.{pb}"],
                           cwd=home, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{pb}: {p.stdout[-2000:]}{p.stderr[-3000:]}"


def test_playbook_from_the_installed_collection_provisions_an_nss_database(installed, tmp_path):
    home, colls, env = installed
    chain = certeurope_standin()
    ca_set = []
    for name, c in chain.items():
        root = c.cert.issuer == c.cert.subject
        ca_set.append({"name": name, "pem": c.pem.decode(), "sha256": c.sha256, "nss_trust": "C,," if root else ",,"})
    db = tmp_path / "profile"
    db.mkdir()
    playbook = tmp_path / "use_collection.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Use the installed collection",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [
            {"name": "Trust the CA set", f"{FQ}.nss_certificate": {"databases": [str(db)], "certificates": ca_set},
             "register": "applied"},
            {"name": "Read it back", f"{FQ}.nss_info": {"databases": [str(db)], "expected_certificates": ca_set},
             "register": "info"},
            {"name": "A filter of the collection (imports its module_utils)",
             "ansible.builtin.set_fact": {"joined": "{{ 'C:/ProgramData/tokentrust' | "
                                                    f"{FQ}.tokentrust_win_path('root.crt') }}}}"}},
            {"name": "Report", "ansible.builtin.copy": {
                "dest": str(tmp_path / "result.json"),
                "content": "{{ {'changed': applied.changed, 'info': info.databases, 'joined': joined} | to_json }}"}},
        ],
    }]))
    argv = [os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", str(playbook)]
    p = subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["changed"] is True
    assert res["joined"] == "C:\\ProgramData\\tokentrust\\root.crt"
    [entry] = res["info"]
    assert entry["compliant"] is True and entry["missing"] == [] and entry["wrong_trust"] == []
    # the independent checker: NSS's certutil on the database the installed module wrote
    listed = certutil_list(str(db))
    assert {c["name"]: listed.get(c["name"]) for c in ca_set} == {c["name"]: c["nss_trust"] for c in ca_set}
    # idempotent from the artifact too
    p = subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert json.loads((tmp_path / "result.json").read_text())["changed"] is False
    # nothing of the repository was used: the modules that ran are the installed copies
    assert not any(k in env for k in ("ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS", "ANSIBLE_ROLES_PATH"))
    assert (colls / "ansible_collections" / NS / NAME / "plugins" / "modules" / "nss_certificate.py").is_file()


def _actions(node, where):
    """(where, action) of every task in a parsed tasks file / play list; the action is the one key that is not
    a task keyword (keywords from ansible-core's own Task and Block classes)."""
    from ansible.playbook.block import Block
    from ansible.playbook.play import Play
    from ansible.playbook.task import Task

    keywords = set(Task.fattributes) | set(Block.fattributes) | {"local_action"}
    if isinstance(node, list):
        for item in node:
            yield from _actions(item, where)
        return
    if not isinstance(node, dict):
        return
    if "hosts" in node or "import_playbook" in node:  # a play
        for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            yield from _actions(node.get(key) or [], where)
        for r in node.get("roles") or []:
            yield where, "role " + (r.get("role", r.get("name")) if isinstance(r, dict) else r)
        if "import_playbook" in node:
            yield where, "playbook " + node["import_playbook"]
        assert not set(node) - set(Play.fattributes) - {"import_playbook", "hosts"}, (where, node.keys())
        return
    if "block" in node:
        for key in ("block", "rescue", "always"):
            yield from _actions(node.get(key) or [], where)
        return
    [action] = [k for k in node if k not in keywords and not k.startswith("with_")]
    yield where, action
    if action.endswith(("include_role", "import_role")):
        yield where, "role " + node[action]["name"]


def test_installed_roles_and_playbooks_call_everything_by_fqcn(installed):
    """Inside a collection, short names of its own modules and roles still resolve (the collection is searched
    implicitly), so running is no proof: every action, role, playbook and filter reference is read here."""
    _home, colls, _env = installed
    top = colls / "ansible_collections" / NS / NAME
    seen, short = [], []
    files = sorted(top.glob("roles/*/tasks/*.yml")) + sorted(top.glob("roles/*/handlers/*.yml")) \
        + sorted(top.glob("playbooks/*.yml"))
    assert len(files) > 20
    for f in files:
        where = str(f.relative_to(top))
        for _w, ref in _actions(yaml.safe_load(f.read_text()) or [], where):
            seen.append(ref)
            name = ref.split(" ", 1)[-1]
            if name.count(".") < 2 and "{{" not in name:
                short.append(f"{where}: {ref}")
        text = f.read_text()
        short += [f"{where}: filter {m}" for m in re.findall(r"\|\s*(tokentrust_win_\w+)", text)]
    assert short == []
    # the references exist: every module and role of the repository is called by its FQCN somewhere
    assert {f"{FQ}.{m}" for m in ("nss_provision", "firefox_policies", "ca_bundle", "pkcs11_token_login")} <= set(seen)
    assert f"role {FQ}.firefox_nss" in seen and f"playbook {FQ}.ca" in seen


def test_execution_environment_installs_the_built_collection(built, tmp_path):
    """execution-environment.yml takes the tarball of `make collection` into the build context and installs it in
    the galaxy stage (from WORKDIR /build). Here: the real `ansible-builder create` on a copy whose
    build/collection/ holds the tarball just built, then the stage's own `ansible-galaxy collection install -r
    requirements.yml` run in the context's _build/ on its file entries (ansible.windows would need the network)."""
    tarball, _ = built
    shutil.copy(os.path.join(ROOT, "execution-environment.yml"), tmp_path / "execution-environment.yml")
    (tmp_path / "build" / "collection").mkdir(parents=True)
    shutil.copy(tarball, tmp_path / "build" / "collection")
    (tmp_path / "build" / "ee").mkdir()
    for f in ("ansible-windows.tar.gz", "pip-ca.crt"):  # lab/ee.py's other inputs (make ee): stand-ins here
        (tmp_path / "build" / "ee" / f).write_bytes(b"")
    ctx = tmp_path / "context"
    p = subprocess.run([os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml", "-c",
                        str(ctx)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "No matches" not in p.stdout + p.stderr, p.stdout + p.stderr
    req = yaml.safe_load((ctx / "_build" / "requirements.yml").read_text())
    files = [c for c in req["collections"] if c.get("type") == "file"]
    assert sorted(c["name"] for c in files) == sorted(
        ["collections/ansible-windows.tar.gz", f"collections/{os.path.basename(tarball)}"])  # galaxy.yml's version
    files = [c for c in files if "tokentrust" in c["name"]]
    (ctx / "_build" / "files-only.yml").write_text(yaml.safe_dump({"collections": files}))
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home, home / "collections")
    p = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--no-deps", "-r",
                        "files-only.yml", "-p", str(home / "ee")], cwd=ctx / "_build", env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    manifest = json.loads((home / "ee" / "ansible_collections" / NS / NAME / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["version"] == yaml.safe_load(
        open(os.path.join(ROOT, "collection", "galaxy.yml"), encoding="utf-8"))["version"]
    assert (home / "ee" / "ansible_collections" / NS / NAME / "plugins" / "modules" / "nss_provision.py").is_file()


def _units(collections, *tests):
    """tests/unit (or some of its files) with `ansible.module_utils.tokentrust_*` = the installed collection's."""
    env = dict(os.environ, TOKENTRUST_COLLECTIONS=str(collections))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                           "tests.collection.units_plugin", *(tests or ["tests/unit"])],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_unit_tests_pass_on_the_installed_collections_module_utils(installed):
    _home, colls, _env = installed
    p = _units(colls)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    tree = colls / "ansible_collections" / NS / NAME / "plugins" / "module_utils"
    assert f"module_utils under test: {tree}" in p.stdout
    assert " passed" in p.stdout and " failed" not in p.stdout and " error" not in p.stdout


def test_unit_tests_on_the_collection_bite(installed, tmp_path):
    """The same run on a copy of the installed collection whose CA file naming is broken fails: the unit tests ran
    the collection's code, not the repository's (which is intact)."""
    _home, colls, _env = installed
    copy = tmp_path / "collections"
    shutil.copytree(colls, copy)
    facts = copy / "ansible_collections" / NS / NAME / "plugins" / "module_utils" / "tokentrust_facts.py"
    text = facts.read_text()
    facts.write_text(text.replace('.lower()).strip("_")', '.lower())', 1))
    assert facts.read_text() != text
    p = _units(copy, "tests/unit/test_facts.py", "tests/unit/test_ca_logic.py")
    assert p.returncode == 1, p.stdout[-3000:]
    assert "FAILED tests/unit/test_facts.py::test_ca_file_names" in p.stdout
    assert "FAILED tests/unit/test_ca_logic.py::test_ca_file_stem" in p.stdout


def test_a_playbook_of_the_installed_collection_writes_into_the_working_directory(installed, tmp_path):
    """The collection's own ca.yml, run as `ansible-playbook tokentrust.workstation.ca` from a project directory:
    the CA cache goes to <that directory>/.cache/ca, nothing into the installed collection (playbook_dir/.. there)."""
    _home, colls, env = installed
    project = tmp_path / "project"
    (project / "cas").mkdir(parents=True)
    cas = []
    for name, c in certeurope_standin().items():
        f = project / "cas" / (name.replace(" ", "_") + ".pem")
        f.write_bytes(c.pem)
        cas.append({"name": name, "path": str(f), "sha256": c.sha256})
    top = colls / "ansible_collections" / NS / NAME
    before = sorted(str(p.relative_to(top)) for p in top.rglob("*"))
    p = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local", f"{FQ}.ca",
                        "-e", json.dumps({"ca_certificates_list": cas, "ansible_python_interpreter": sys.executable})],
                       cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert sorted(n.name for n in (project / ".cache" / "ca").iterdir()) == sorted(
        f"{stem}{ext}" for stem in (ca_file_stem(c["name"]) for c in cas) for ext in (".der", ".pem"))
    assert sorted(str(p.relative_to(top)) for p in top.rglob("*")) == before


def _filters():
    with open(os.path.join(ROOT, "filter_plugins", "tokentrust.py"), encoding="utf-8") as f:
        return sorted(re.findall(r'^\s*"(tokentrust_\w+)":', f.read(), re.M))


def test_license_in_repository_and_tarball(built):
    tarball, _ = built
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text and len(text) > 30000
    if os.path.exists("/usr/share/common-licenses/GPL-3"):  # Debian's copy of the full text
        with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
            assert text == f.read()
    with tarfile.open(tarball) as t:
        assert t.extractfile("LICENSE").read().decode() == text
        manifest = json.load(t.extractfile("MANIFEST.json"))
    assert manifest["collection_info"]["license"] == ["GPL-3.0-or-later"]


def test_every_filter_is_documented_and_renders(installed):
    """ansible-doc -t filter lists every filter of the collection with a description (none UNDOCUMENTED) and renders
    each one's documentation, with its options and return value; that the hand-written documentation files agree
    with the functions is tests/unit/test_filter_docs.py's part."""
    home, _colls, env = installed
    names = _filters()
    assert len(names) >= 35
    p = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "filter", "-l", FQ], cwd=home, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    listed = {line.split()[0]: line.split(None, 1)[1] for line in p.stdout.splitlines() if line.startswith(FQ + ".")}
    assert sorted(listed) == [f"{FQ}.{n}" for n in names]
    assert not [n for n, d in listed.items() if "UNDOCUMENTED" in d], listed
    p = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "filter", "--json", *listed], cwd=home, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    docs = json.loads(p.stdout)
    for n in names:
        doc = docs[f"{FQ}.{n}"]
        assert doc["doc"]["name"] == n and doc["doc"]["short_description"] and "_input" in doc["doc"]["options"], n
        assert f"{FQ}.{n}" in doc["examples"], n
        assert all(o.get("type") and o.get("description") for o in doc["doc"]["options"].values()), n
        assert (doc.get("return") or {}).get("_value", {}).get("type"), n
    p = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "filter", f"{FQ}.tokentrust_win_path"], cwd=home,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "exactly one backslash" in " ".join(p.stdout.split()), p.stdout + p.stderr


def test_changelog_is_generated_from_fragments():
    """CHANGELOG.md is what antsibull-changelog generates from changelogs/changelog.yaml, whose releases list every
    module of the repository (the hand-written one missed nss_prerequisites)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "changelog.py"), "--check"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(os.path.join(ROOT, "collection", "changelogs", "changelog.yaml"), encoding="utf-8") as f:
        releases = yaml.safe_load(f)["releases"]
    modules = sorted(m["name"] for r in releases.values() for m in r.get("modules", []))
    # a module added since the last release is listed by the next `changelog.py` release: until then its documentation
    # must name a version after the newest release (version_added), never one already out
    newest = max(releases, key=lambda v: tuple(int(x) for x in v.split(".")))
    unreleased = {}
    for n in sorted(set(REPO_MODULES) - set(modules)):
        with open(os.path.join(ROOT, "library", n + ".py"), encoding="utf-8") as f:
            text = f.read()
        doc = yaml.safe_load(text.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0])
        unreleased[n] = str(doc.get("version_added"))
    def key(v):
        return tuple(int(x) for x in v.split("."))

    assert not [n for n, v in unreleased.items() if key(v) <= key(newest)], (newest, unreleased)
    assert sorted(modules + list(unreleased)) == REPO_MODULES
    filters = sorted(x["name"] for r in releases.values() for x in r.get("plugins", {}).get("filter", []))
    assert filters == _filters()
