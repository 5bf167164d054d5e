"""Real-browser proofs for the Firefox provisioning (issue 4, items 6 and 7).

A local HTTPS server on 127.0.0.1 presents a certificate issued by a test intermediate under a test root.
Before provisioning, Firefox ESR refuses it (negative control); after our modules ran on the profile, the page
loads. Then the same while Firefox is running on the profile: the change must survive Firefox quitting.
"""
import http.server
import os
import ssl
import threading

import pytest

from lab.pki import make_ca, make_leaf
from tests.support.ansible_run import run_module
from tests.support.firefox import Firefox, create_profile, start_once
from tests.support.nsstools import certutil_list, modutil_modules

pytestmark = [pytest.mark.firefox, pytest.mark.slow]
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
MARKER = "tokentrust browser proof page"


@pytest.fixture(scope="module")
def pki():
    root = make_ca("Proof Root CA", key_type="rsa")
    inter = make_ca("Proof Issuing CA", issuer=root, key_type="rsa")
    leaf = make_leaf("localhost", inter, server_names=["localhost", "127.0.0.1"], key_type="rsa")
    return root, inter, leaf


@pytest.fixture(scope="module")
def https_server(pki, tmp_path_factory):
    _, _, leaf = pki
    d = tmp_path_factory.mktemp("srv")
    (d / "cert.pem").write_bytes(leaf.pem)
    (d / "key.pem").write_bytes(leaf.key_pem)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = ("<html><head><title>proof</title></head><body><p>%s</p></body></html>" % MARKER).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))  # leaf only: the intermediate must come from NSS
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield "https://127.0.0.1:%d/" % srv.server_address[1]
    srv.shutdown()


def ca_set(pki):
    root, inter, _ = pki
    return [{"name": "Proof Root CA", "pem": root.pem.decode(), "nss_trust": "C,,"},
            {"name": "Proof Issuing CA", "pem": inter.pem.decode(), "nss_trust": ",,"}]


def provision(databases, pki):
    r = run_module("nss_certificate", {"databases": databases, "certificates": ca_set(pki)})
    assert not r.get("failed"), r
    m = run_module("nss_pkcs11_module", {"databases": databases, "name": "gem", "library": SOFTHSM})
    assert not m.get("failed"), m
    return r, m


def test_refused_before_loaded_after(tmp_path, pki, https_server):
    home = str(tmp_path / "home")
    os.makedirs(home)
    prof = create_profile(home, "proof")
    start_once(prof, home=home)
    assert os.path.exists(os.path.join(prof, "cert9.db"))
    with Firefox(prof) as ff:
        state, why = ff.load(https_server)
    assert state in ("insecure", "error"), "negative control: Firefox must refuse an unknown CA (%s)" % why
    provision([prof], pki)
    with Firefox(prof) as ff:
        state, text = ff.load(https_server)
    assert state == "ok" and MARKER in text, (state, text)
    # Firefox ran on the profile and kept what we wrote
    assert {"Proof Root CA", "Proof Issuing CA"} <= set(certutil_list(prof))
    assert modutil_modules(prof)["gem"] == SOFTHSM


def test_provision_while_firefox_runs(tmp_path, pki, https_server):
    home = str(tmp_path / "home")
    os.makedirs(home)
    prof = create_profile(home, "running")
    start_once(prof, home=home)
    with Firefox(prof) as ff:
        found = run_module("firefox_profiles_info", {"homes": [home]})
        entry = [p for p in found["profiles"] if p["path"] == prof][0]
        assert entry["in_use"] is True, entry
        r, m = provision([entry], pki)
        assert r["changed"] and r["restart_needed"] is True
        assert m["databases"][0]["restart_needed"] is True
        # Observed with Firefox ESR 153: NSS looks certificates up in cert9.db live, so the running browser
        # already trusts the new CA; the PKCS#11 module is only loaded at the next start (restart_needed).
        state, text = ff.load(https_server)
        assert state == "ok" and MARKER in text, (state, text)
    # Firefox has quit: nothing it wrote on the way out removed our certificates or module
    assert {"Proof Root CA", "Proof Issuing CA"} <= set(certutil_list(prof))
    assert modutil_modules(prof)["gem"] == SOFTHSM
    with Firefox(prof) as ff:
        state, text = ff.load(https_server)
    assert state == "ok" and MARKER in text
