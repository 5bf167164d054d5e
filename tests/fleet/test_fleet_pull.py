"""Pull mode, real (issue 21, item 2): a workstation that was off during the push converges itself when it comes
online, and the report shows it.

The controller publishes (playbooks/pull_publish.yml, playbooks/pull_agent.yml, then playbooks/site.yml and
playbooks/report.yml) the content (playbooks/pull_publish.yml: tarball + .sha256 + the pinned ansible-core
wheels) and serves it on 127.0.0.1 (python3 -m http.server); playbooks/pull_agent.yml installs the agent on the
second workstation while it is on; it is switched off; site.yml is pushed (the first converges); it is switched on
and its network-up hook runs as ifupdown runs it (the containers have no systemd, no ifupdown); the agent fetches,
checks and runs the content with the venv's ansible-core. Asserted: certutil of Firefox's NSS inside the
container, the agent's result.json, report.yml's fleet.json and the controller-side state.

Issue 29: the content is signed (the controller's Ed25519 key, made by pull_agent.yml in a temporary directory
here); content forged by whoever serves it is refused on the workstation (nothing run as root, the refusal in
result.json), and the genuine content converges again over https (a CA file pinned by the role).
"""
import json
import os
import ssl
import subprocess
import sys
import threading
import time

import pytest

from lab import fleet as fleetlab
from tests.fleet.conftest import recap

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

AGENT_RESULT = "/var/lib/tokentrust/pull/result.json"


@pytest.fixture(scope="module")
def served(fleet, tmp_path_factory):
    pub = tmp_path_factory.mktemp("pull-pub")
    keydir = tmp_path_factory.mktemp("pull-key")
    os.chmod(keydir, 0o700)
    key = "tokentrust_pull_signing_key=%s/pull-signing.key" % keydir
    run = fleet.playbook("pull_publish.yml", "-e", "tokentrust_pull_publish_dir=%s" % pub, "-e", key)
    assert run.returncode == 0, run.stdout[-4000:]
    assert os.path.exists(os.path.join(pub, "tokentrust-content.tar.gz.manifest"))
    assert oct(os.stat(os.path.join(keydir, "pull-signing.key")).st_mode & 0o777) == "0o600"
    again = fleet.playbook("pull_publish.yml", "-e", "tokentrust_pull_publish_dir=%s" % pub, "-e", key)
    assert recap(again.stdout)["localhost"]["changed"] == 0, again.stdout[-3000:]  # same content, same bytes
    port = fleetlab.free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory",
                            str(pub)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not fleetlab._port_open(port):
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.2)
        yield {"dir": pub, "url": "http://127.0.0.1:%d/tokentrust-content.tar.gz" % port,
               "wheels": "http://127.0.0.1:%d/wheels/" % port, "key": key}
    finally:
        srv.terminate()
        srv.wait(10)


def test_a_workstation_off_during_the_push_converges_in_pull_mode(fleet, served):
    on, off = fleet.hosts[0], fleet.hosts[-1]
    for h in (on, off):
        fleetlab.reset_host(fleet.m, h)  # fresh workstations

    agent = fleet.playbook("pull_agent.yml", "-l", off, "-e", "tokentrust_pull_url=" + served["url"],
                           "-e", "tokentrust_pull_wheels_url=" + served["wheels"], "-e", served["key"])
    assert agent.returncode == 0, agent.stdout[-4000:]
    core = fleet.sh(off, "/opt/tokentrust/ansible/bin/ansible-playbook --version").stdout
    assert "core 2.19.14" in core, core
    cfg = fleet.read_json(off, "/etc/tokentrust/pull.json")
    assert cfg["name"] == off and cfg["url"] == served["url"] and len(cfg["public_keys"]) == 1
    again = fleet.playbook("pull_agent.yml", "-l", off, "-e", "tokentrust_pull_url=" + served["url"],
                           "-e", "tokentrust_pull_wheels_url=" + served["wheels"], "-e", served["key"])
    assert recap(again.stdout)[off]["changed"] == 0, again.stdout[-3000:]

    fleetlab.stop_host(fleet.m, off)
    push = fleet.playbook("site.yml")
    rc = recap(push.stdout)
    assert rc[on]["failed"] == 0 and rc[on]["unreachable"] == 0 and rc[off]["unreachable"] == 1, rc
    names = [ca["name"] for ca in fleet.m["pki"]["cas"]]

    fleetlab.resume_host(fleet.m, off)
    before = {p: fleet.certutil(off, p) for ps in fleet.profiles(off).values() for p in ps}
    assert before and all(not (set(names) & set(v)) for v in before.values())  # nothing converged it yet
    # the machine comes online: ifupdown runs the if-up.d hooks with IFACE set (here by hand: no ifupdown)
    fleet.sh(off, "IFACE=eth0 MODE=start PHASE=post-up /etc/network/if-up.d/tokentrust-pull")
    deadline, res = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        out = fleet.sh(off, "cat %s 2>/dev/null || true" % AGENT_RESULT).stdout
        if out.strip():
            res = json.loads(out)
            break
        time.sleep(3)
    assert res is not None, fleet.sh(off, "tail -c 3000 /var/lib/tokentrust/pull/last.log || true").stdout
    assert res["result"] == "converged", res.get("error")
    assert res["ansible_core"] == "2.19.14" and res["reason"] == "network up: eth0" and res["recap"]["changed"] > 0
    for ps in fleet.profiles(off).values():
        for p in ps:
            listed = fleet.certutil(off, p)
            assert all(n in listed for n in names), (p, listed)
    # a second hook right after starts no run (converged minutes ago)
    again = fleet.sh(off, "/usr/local/sbin/tokentrust-pull --reason test").stdout
    assert "nothing to do" in again

    rep = fleet.playbook("report.yml")
    assert rep.returncode == 0, rep.stdout[-4000:]
    with open(os.path.join(fleet.m["dir"], "reports", "fleet.json")) as f:
        hosts = {h["name"]: h for h in json.load(f)["hosts"]}
    assert hosts[off]["status"] == "ok", hosts[off]["reasons"]
    assert hosts[off]["state"]["converged_by"] == "pull" and hosts[off]["state"]["converged_at"] == res["finished"]
    with open(os.path.join(fleet.m["dir"], "reports", "state", "state.json")) as f:
        st = json.load(f)["hosts"]
    assert st[off]["pull_converged"] == res["finished"]
    with open(os.path.join(fleet.m["dir"], "reports", "state", "not_converged")) as f:
        assert off not in f.read().split()


def _forge(served, tmp):
    """The server's owner (or the network path) publishes their own content, signed with their own key."""
    from tests.hostile.test_pull_signed import make_key, project, publish
    saved = {n: open(os.path.join(served["dir"], n), "rb").read()
             for n in ("tokentrust-content.tar.gz", "tokentrust-content.tar.gz.manifest")}
    os.makedirs(tmp / "evilkey", mode=0o700)
    make_key(tmp / "evilkey" / "k")
    publish(project(tmp / "evil", "/root/pwned-by-pull", "pwned"), served["dir"], tmp / "evilkey" / "k")
    return saved


def test_forged_content_is_refused_and_genuine_converges_over_https(fleet, served, tmp_path):
    """After the test above (the agent installed on the last workstation with the genuine public key)."""
    off = fleet.hosts[-1]
    saved = _forge(served, tmp_path)
    try:
        fleet.sh(off, "rm -f %s; /usr/local/sbin/tokentrust-pull --force --reason forged" % AGENT_RESULT, check=False)
        res = fleet.read_json(off, AGENT_RESULT)
        assert res["result"] == "refused" and "bad signature" in res["error"], res
        assert fleet.sh(off, "test -e /root/pwned-by-pull && echo RAN || echo no").stdout.strip() == "no"
    finally:
        for n, data in saved.items():
            with open(os.path.join(served["dir"], n), "wb") as f:
                f.write(data)

    # the genuine content over https: the role pins the server's CA file
    from lab.pki import make_ca, make_leaf
    ca = make_ca("pull https CA")
    leaf = make_leaf("127.0.0.1", ca, server_names=["127.0.0.1"])
    for n, data in (("ca.pem", ca.pem), ("leaf.pem", leaf.pem), ("leaf.key", leaf.key_pem)):
        (tmp_path / n).write_bytes(data)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "leaf.pem"), str(tmp_path / "leaf.key"))
    import functools
    import http.server
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(served["dir"])))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = "https://127.0.0.1:%d/tokentrust-content.tar.gz" % httpd.server_address[1]
        agent = fleet.playbook("pull_agent.yml", "-l", off, "-e", "tokentrust_pull_url=" + url,
                               "-e", "tokentrust_pull_wheels_url=" + served["wheels"], "-e", served["key"],
                               "-e", "tokentrust_pull_cafile=%s" % (tmp_path / "ca.pem"))
        assert agent.returncode == 0, agent.stdout[-4000:]
        fleet.sh(off, "/usr/local/sbin/tokentrust-pull --force --reason https", check=False)
        res = fleet.read_json(off, AGENT_RESULT)
        assert res["result"] == "converged" and res["url"] == url, res.get("error")
    finally:
        httpd.shutdown()
        httpd.server_close()
