"""The pull content holds all that the project's own playbooks need to start (a clean-clone CI found it without
plugin_utils/: every pull workstation failed at the callback plugin's import, before any task).

The real publish.py packs this repository; the archive is unpacked into an empty directory and ansible-playbook
(the venv's, as on a workstation) checks the pulled playbooks from there with the pulled ansible.cfg; then the filter
plugin is imported from the pulled tree, as a run does: it loads module_utils and plugin_utils by file, from that tree
(a syntax check alone stayed green without plugin_utils/: this import is what turned red).
"""
import io
import json
import os
import subprocess
import sys
import tarfile

from tests.support.ansible_run import ROOT

FILES = os.path.join(ROOT, "roles", "tokentrust_pull", "files")
BIN = os.path.dirname(sys.executable)


def _published(tmp_path):
    key = tmp_path / "key"
    subprocess.run([sys.executable, os.path.join(FILES, "pull_key.py"), "--key", str(key)], check=True,
                   capture_output=True)
    p = subprocess.run([sys.executable, os.path.join(FILES, "publish.py"), "--project", ROOT, "--dest",
                        str(tmp_path / "pub"), "--key", str(key)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["files"] > 100
    return (tmp_path / "pub" / "tokentrust-content.tar.gz").read_bytes()


def test_the_pulled_content_starts_its_own_playbooks(tmp_path):
    blob = _published(tmp_path)
    content = tmp_path / "content"
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(content, filter="data")
    assert any(n.startswith("plugin_utils/tokentrust_windows/") for n in names), sorted(names)[:20]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(content / "ansible.cfg"), HOME=str(tmp_path), ANSIBLE_LOCAL_TEMP=str(tmp_path))
    for playbook in ("site.yml", "verify.yml"):
        p = subprocess.run([os.path.join(BIN, "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                            os.path.join("playbooks", playbook)], cwd=content, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, (playbook, p.stdout[-2000:], p.stderr[-3000:])
    # the filter plugin and the Windows planner import from the pulled tree, not from this checkout
    probe = ("import sys; sys.path.insert(0, 'filter_plugins'); import tokentrust as t; "
             "print(t.FilterModule().filters() and list(sys.modules['plugin_utils'].__path__)[0])")
    p = subprocess.run([sys.executable, "-c", probe], cwd=content, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().startswith(str(content)), p.stdout
