"""Pull mode runs only what the fleet's owner signed (issue 29, item 1): the real agent against hostile servers.

The agent (roles/tokentrust_pull/files/tokentrust_pull.py) runs here as root, as on a workstation, with the role's
real parts: the signing key made by pull_key.py, the content and signed manifest made by publish.py from a small
project whose site.yml writes a marker file, servers on 127.0.0.1 (http and https). The attacker controls the
server (or the network path): forged content, a forged checksum, replayed older signed content, content signed with
a rotated-out key, a trickling server, a huge body. Asserted each time: the marker file (what root ran), the
agent's result.json (the refusal is reported), its duration, and that nothing was unpacked.

TT_PULL_AGENT=<path> runs another agent (how these tests were seen red on the agent before signing).
"""
import base64
import http.server
import json
import os
import resource
import shutil
import ssl
import subprocess
import sys
import threading
import time

import pytest

from tests.support.ansible_run import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs as root, as on a workstation")

FILES = os.path.join(ROOT, "roles", "tokentrust_pull", "files")
AGENT = os.environ.get("TT_PULL_AGENT") or os.path.join(FILES, "tokentrust_pull.py")
VENV = os.path.dirname(os.path.dirname(sys.executable))
NAME = "tokentrust-content.tar.gz"


def make_key(path):
    p = subprocess.run([sys.executable, os.path.join(FILES, "pull_key.py"), "--key", str(path)], capture_output=True,
                       text=True, check=True)
    return json.loads(p.stdout)


def project(d, marker, text):
    """A content project whose site.yml writes `text` into `marker` (what root ran)."""
    (d / "playbooks").mkdir(parents=True, exist_ok=True)
    (d / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = False\n")
    (d / "playbooks" / "site.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: marker\n      ansible.builtin.copy:\n        dest: %s\n        content: %s\n" % (marker, text))
    return d


def publish(proj, dest, key):
    p = subprocess.run([sys.executable, os.path.join(FILES, "publish.py"), "--project", str(proj), "--dest",
                        str(dest), "--key", str(key)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


class Handler(http.server.SimpleHTTPRequestHandler):
    special = {}

    def log_message(self, *a):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        fn = type(self).special.get(name)
        if fn is None:
            return super().do_GET()
        return fn(self)


class Server:
    def __init__(self, directory, tls=None, special=None):
        h = type("H", (Handler,), {"special": special or {}})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     lambda *a, **k: h(*a, directory=str(directory), **k))
        self.httpd.daemon_threads = True
        if tls:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = "%s://127.0.0.1:%d/%s" % ("https" if tls else "http", self.httpd.server_address[1], NAME)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    from lab.pki import make_ca, make_leaf
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca("pull test CA")
    leaf = make_leaf("127.0.0.1", ca, server_names=["127.0.0.1"])
    (d / "ca.pem").write_bytes(ca.pem)
    (d / "leaf.pem").write_bytes(leaf.pem)
    (d / "leaf.key").write_bytes(leaf.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "leaf.pem"), str(d / "leaf.key"))
    return {"ctx": ctx, "cafile": str(d / "ca.pem")}


@pytest.fixture
def lab(tmp_path):
    os.chmod(tmp_path, 0o755)
    keydir = tmp_path / "controller"
    keydir.mkdir(mode=0o700)
    key = keydir / "pull-signing.key"
    pub = make_key(key)["public_key"]
    marker = tmp_path / "marker"
    pubdir = tmp_path / "pub"
    agent = tmp_path / "agent"
    return {"tmp": tmp_path, "key": key, "pub": pub, "marker": marker, "pubdir": pubdir, "agent": agent,
            "proj": project(tmp_path / "proj", marker, "genuine-1")}


def agent_run(lab, url, cafile=None, keys=None, timeout=120, extra=None, preexec=None):
    cfg = {"url": url, "venv": VENV, "dir": str(lab["agent"]), "name": "pullhost", "min_interval_minutes": 0,
           "public_keys": keys if keys is not None else [lab["pub"]], "fetch_seconds": 20, "deadline_seconds": 300,
           "timeout": 10}
    if cafile:
        cfg["cafile"] = cafile
    cfg.update(extra or {})
    path = lab["tmp"] / "pull.json"
    path.write_text(json.dumps(cfg))
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, AGENT, "--config", str(path), "--force", "--reason", "test"],
                           capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the agent ran past %d s (no overall deadline)" % timeout) from exc
    secs = time.monotonic() - t0
    try:
        res = json.loads((lab["agent"] / "result.json").read_text())
    except (FileNotFoundError, ValueError):
        res = None
    return p, res, secs


def ran(lab):
    return lab["marker"].read_text() if lab["marker"].exists() else None


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_genuine_signed_content_converges(lab, tls, scheme):
    out = publish(lab["proj"], lab["pubdir"], lab["key"])
    assert out["changed"] and out["version"] == 1
    assert not (lab["pubdir"] / (NAME + ".sha256")).exists()
    again = publish(lab["proj"], lab["pubdir"], lab["key"])
    assert not again["changed"] and again["version"] == 1  # same content: same bytes, same version
    srv = Server(lab["pubdir"], tls["ctx"] if scheme == "https" else None)
    try:
        p, res, _ = agent_run(lab, srv.url, cafile=tls["cafile"] if scheme == "https" else None)
    finally:
        srv.close()
    assert res and res["result"] == "converged", (p.stdout, p.stderr, res)
    assert res["version"] == 1 and ran(lab) == "genuine-1"
    assert json.loads((lab["agent"] / "accepted.json").read_text())["version"] == 1
    assert oct(os.stat(lab["agent"] / ".lock").st_mode & 0o777) == "0o600"


def forge_own_key(lab, evil_proj):
    """The attacker publishes their own content signed with their own key (and the old-style .sha256)."""
    evil_key = lab["tmp"] / "evil" / "k"
    (lab["tmp"] / "evil").mkdir(mode=0o700)
    make_key(evil_key)
    publish(evil_proj, lab["pubdir"], evil_key)
    import hashlib
    blob = (lab["pubdir"] / NAME).read_bytes()
    (lab["pubdir"] / (NAME + ".sha256")).write_text("%s  %s\n" % (hashlib.sha256(blob).hexdigest(), NAME))


def forge_checksum(lab, evil_proj):
    """Genuine signature kept; the attacker swaps the tarball and rewrites the sha256/size inside the payload."""
    import hashlib
    tmp = lab["tmp"] / "evilpub"
    evil_key = lab["tmp"] / "evil2" / "k"
    (lab["tmp"] / "evil2").mkdir(mode=0o700)
    make_key(evil_key)
    publish(evil_proj, tmp, evil_key)
    blob = (tmp / NAME).read_bytes()
    man = json.loads((lab["pubdir"] / (NAME + ".manifest")).read_text())
    payload = json.loads(base64.b64decode(man["payload"]))
    payload.update(sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))
    man["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).decode()
    (lab["pubdir"] / (NAME + ".manifest")).write_text(json.dumps(man))
    (lab["pubdir"] / NAME).write_bytes(blob)
    (lab["pubdir"] / (NAME + ".sha256")).write_text("%s  %s\n" % (hashlib.sha256(blob).hexdigest(), NAME))


def swap_tarball(lab, evil_proj):
    """Genuine manifest untouched; only the tarball (and the old-style .sha256) replaced."""
    import hashlib
    tmp = lab["tmp"] / "evilpub3"
    evil_key = lab["tmp"] / "evil3" / "k"
    (lab["tmp"] / "evil3").mkdir(mode=0o700)
    make_key(evil_key)
    publish(evil_proj, tmp, evil_key)
    blob = (tmp / NAME).read_bytes()
    (lab["pubdir"] / NAME).write_bytes(blob)
    (lab["pubdir"] / (NAME + ".sha256")).write_text("%s  %s\n" % (hashlib.sha256(blob).hexdigest(), NAME))


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("forge,why", [(forge_own_key, "bad signature"), (forge_checksum, "bad signature"),
                                       (swap_tarball, "the signed manifest says")])
def test_forged_content_is_refused(lab, tls, scheme, forge, why):
    publish(lab["proj"], lab["pubdir"], lab["key"])
    evil = project(lab["tmp"] / "evilproj", lab["marker"], "pwned-by-attacker")
    forge(lab, evil)
    srv = Server(lab["pubdir"], tls["ctx"] if scheme == "https" else None)
    try:
        p, res, _ = agent_run(lab, srv.url, cafile=tls["cafile"] if scheme == "https" else None)
    finally:
        srv.close()
    assert ran(lab) is None, "root ran the attacker's content"
    assert res and res["result"] == "refused" and why in res["error"], (p.stdout, p.stderr, res)
    assert "nothing was" in res["error"]
    assert not (lab["agent"] / "content").exists() and not (lab["agent"] / "content.new").exists()
    assert p.returncode == 1


def test_replayed_older_signed_content_is_refused(lab):
    publish(lab["proj"], lab["pubdir"], lab["key"])
    saved = lab["tmp"] / "v1"
    shutil.copytree(lab["pubdir"], saved)
    srv = Server(lab["pubdir"])
    try:
        _, res, _ = agent_run(lab, srv.url)
        assert res["result"] == "converged" and ran(lab) == "genuine-1"
        project(lab["proj"], lab["marker"], "genuine-2")
        assert publish(lab["proj"], lab["pubdir"], lab["key"])["version"] == 2
        _, res, _ = agent_run(lab, srv.url)
        assert res["result"] == "converged" and ran(lab) == "genuine-2"
        # the attacker serves the older, genuinely signed content again
        for f in (NAME, NAME + ".manifest"):
            shutil.copy(saved / f, lab["pubdir"] / f)
        p, res, _ = agent_run(lab, srv.url)
    finally:
        srv.close()
    assert res["result"] == "refused" and "replayed older content: version 1 is lower than version 2" in res["error"], \
        (p.stdout, res)
    assert ran(lab) == "genuine-2"


def test_version_survives_a_wiped_publish_dir(lab):
    """The counter kept next to the key: a new publish dir does not restart at 1 (it would be refused as a replay)."""
    assert publish(lab["proj"], lab["pubdir"], lab["key"])["version"] == 1
    shutil.rmtree(lab["pubdir"])
    project(lab["proj"], lab["marker"], "genuine-2")
    assert publish(lab["proj"], lab["pubdir"], lab["key"])["version"] == 2
    assert oct(os.stat(str(lab["key"]) + ".version").st_mode & 0o777) == "0o600"


def test_rotated_out_key_is_refused(lab):
    publish(lab["proj"], lab["pubdir"], lab["key"])
    newkey = lab["tmp"] / "controller" / "pull-signing-2.key"
    new = make_key(newkey)
    srv = Server(lab["pubdir"])
    try:
        # during a planned rotation both keys are pinned: old-key content still converges
        _, res, _ = agent_run(lab, srv.url, keys=[new["public_key"], lab["pub"]])
        assert res["result"] == "converged", res
        # rotation done (pull_agent.yml pinned the new key only): content signed with the old key is refused
        project(lab["proj"], lab["marker"], "old-key-2")
        publish(lab["proj"], lab["pubdir"], lab["key"])
        p, res, _ = agent_run(lab, srv.url, keys=[new["public_key"]])
        assert res["result"] == "refused" and "bad signature" in res["error"], (p.stdout, res)
        assert ran(lab) == "genuine-1"
        # the same content signed with the new key converges (the version goes on from the published one)
        assert publish(lab["proj"], lab["pubdir"], newkey)["version"] == 3
        _, res, _ = agent_run(lab, srv.url, keys=[new["public_key"]])
        assert res["result"] == "converged" and ran(lab) == "old-key-2", res
    finally:
        srv.close()


def trickle(h):
    h.send_response(200)
    h.send_header("Content-Length", "200")
    h.end_headers()
    try:
        for _ in range(600):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.5)
    except OSError:
        pass


@pytest.mark.parametrize("which", ["manifest", "content"])
def test_trickling_server_is_cut_at_the_overall_deadline(lab, which):
    publish(lab["proj"], lab["pubdir"], lab["key"])
    special = {NAME: trickle, NAME + ".sha256": trickle}
    if which == "manifest":
        special[NAME + ".manifest"] = trickle
    srv = Server(lab["pubdir"], special=special)
    try:
        p, res, secs = agent_run(lab, srv.url, extra={"fetch_seconds": 4, "timeout": 2}, timeout=40)
    finally:
        srv.close()
    assert secs < 15, secs
    assert res and res["result"] == "refused" and "did not finish within 4 s" in res["error"], (p.stdout, res)
    assert ran(lab) is None
    assert not (lab["agent"] / "content").exists()
    print("trickling server (%s): the agent ended after %.1f s (fetch_seconds 4)" % (which, secs))


def huge(h):
    h.send_response(200)
    h.send_header("Content-Length", str(3 * 1024 ** 3))
    h.end_headers()
    chunk = b"\0" * (1 << 20)
    try:
        for _ in range(3 * 1024):
            h.wfile.write(chunk)
    except OSError:
        pass


def huge_unannounced(h):
    h.send_response(200)
    h.end_headers()
    chunk = b"\0" * (1 << 20)
    try:
        for _ in range(3 * 1024):
            h.wfile.write(chunk)
    except OSError:
        pass
    h.close_connection = True


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))  # 1.5 GiB: a 3 GiB body cannot fit


@pytest.mark.parametrize("which", ["manifest", "content"])
@pytest.mark.parametrize("body", [huge, huge_unannounced])
def test_huge_body_is_refused_without_reading_it(lab, which, body):
    publish(lab["proj"], lab["pubdir"], lab["key"])
    name = NAME + ".manifest" if which == "manifest" else NAME
    special = {name: body}
    if which == "content":
        special[NAME + ".sha256"] = body  # the old agent's checksum file: huge too
    srv = Server(lab["pubdir"], special=special)
    try:
        p, res, secs = agent_run(lab, srv.url, timeout=60, preexec=limit_memory)
    finally:
        srv.close()
    assert res and res["result"] == "refused", (p.stdout, p.stderr[-2000:], res)
    assert "bytes" in res["error"] and "nothing was" in res["error"], res["error"]
    assert ran(lab) is None and secs < 30, secs
    assert not [f for f in os.listdir(lab["agent"]) if f.startswith(".download-")]  # the partial file is gone


def test_unsigned_configuration_runs_nothing(lab):
    publish(lab["proj"], lab["pubdir"], lab["key"])
    srv = Server(lab["pubdir"])
    try:
        _, res, _ = agent_run(lab, srv.url, keys=[])
    finally:
        srv.close()
    assert res["result"] == "refused" and "no public key is pinned" in res["error"]
    assert ran(lab) is None


def test_signing_key_in_a_world_writable_directory_is_refused(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    p = subprocess.run([sys.executable, os.path.join(FILES, "pull_key.py"), "--key", str(d / "k")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "group- or world-writable" in p.stderr and not (d / "k").exists()
