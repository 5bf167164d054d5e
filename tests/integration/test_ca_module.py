"""The ca_bundle module and the ca_certificates role, run for real through ansible / ansible-playbook.

Certificates come from the real HTTP(S) servers of test_ca_server.py (127.0.0.1 only). Cached files are
cross-checked with openssl; the "nothing runs after a failed pin" guarantee is checked on ca.yml (site.yml's
CA stage) with a wrapper playbook whose extra play would leave a marker file on every host.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.integration.test_ca_server import ca_http, ca_https, ca_pki  # noqa: F401 - shared fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
# The CA stage as site.yml imports it. (site.yml itself now stops when the inventory selects no workstation, and
# these hosts are in no stage group on purpose: only the CA stage and the test's own play run on them.)
SITE = os.path.join(ROOT, "playbooks", "ca.yml")


def _env():
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        ANSIBLE_LOCAL_TEMP=os.path.join(os.environ.get("TMPDIR", "/tmp"), "ansible-local-ca-tests"),
    )
    return env


def run_module(args: dict, *flags):
    cmd = [os.path.join(BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
           "-e", f"ansible_python_interpreter={sys.executable}", "-m", "ca_bundle", "-a", json.dumps(args), *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"no JSON from ansible (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return out["plays"][0]["tasks"][0]["hosts"]["localhost"]


def openssl_sha256(path, der=False):
    cmd = ["openssl", "x509", "-in", path, "-noout", "-fingerprint", "-sha256"] + (["-inform", "DER"] if der else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    return out.split("=", 1)[1].replace(":", "")


# ----------------------------------------------------------------------------- the module

def test_module_check_then_real_then_idempotent(ca_http, ca_pki, tmp_path):  # noqa: F811
    dest = tmp_path / "cache"
    args = {"dest": str(dest), "cas": [
        {"name": "Lab Root", "sha256": ca_pki.root.sha256_colon,
         "url": [ca_http.url("/gone.crt"), ca_http.url("/root.der")]},
        {"name": "Lab Issuing", "sha256": "sha256:" + ca_pki.inter.sha256.lower(), "url": ca_http.url("/bundle.p7b")},
    ]}
    files = sorted(str(dest / f) for f in ("lab_issuing.der", "lab_issuing.pem", "lab_root.der", "lab_root.pem"))

    check = run_module(args, "--check", "--diff")
    assert check["changed"] is True and not check.get("failed")
    assert check["written"] == files
    assert not dest.exists()
    assert check["diff"]["before"] == "lab_root.pem: absent\nlab_issuing.pem: absent\n"
    assert check["diff"]["after"] == f"lab_root.pem: {ca_pki.root.sha256}\nlab_issuing.pem: {ca_pki.inter.sha256}\n"

    real = run_module(args)
    assert real["changed"] is True and real["written"] == files
    assert real["warnings"] == [f"CA 'Lab Root': {ca_http.url('/gone.crt')} failed (HTTP 404 Not Found); used "
                                f"{ca_http.url('/root.der')}"]
    assert [(c["name"], c["role"], c["nss_trust"], c["windows_store"]) for c in real["cas"]] == [
        ("Lab Root", "root", "C,,", "Root"), ("Lab Issuing", "intermediate", ",,", "CA")]
    # the cache, as openssl sees it
    assert openssl_sha256(str(dest / "lab_root.pem")) == ca_pki.root.sha256
    assert openssl_sha256(str(dest / "lab_root.der"), der=True) == ca_pki.root.sha256
    assert openssl_sha256(str(dest / "lab_issuing.der"), der=True) == ca_pki.inter.sha256
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(dest / "lab_root.pem"), str(dest / "lab_issuing.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert oct(os.stat(dest / "lab_root.pem").st_mode & 0o777) == "0o644"

    ca_http.log.clear()
    again = run_module(args, "--diff")
    assert again["changed"] is False and again["written"] == []
    assert again["sources"] == {"Lab Root": "cache:" + str(dest / "lab_root.pem"),
                                "Lab Issuing": "cache:" + str(dest / "lab_issuing.pem")}
    assert ca_http.log == []  # offline from the cache: no request at all
    assert again["diff"]["before"] == again["diff"]["after"]


def test_module_refuses_each_bad_ca_with_its_message(ca_http, ca_pki, tmp_path):  # noqa: F811
    dest = tmp_path / "cache"
    u = ca_http.url
    args = {"dest": str(dest), "timeout": 1, "cas": [
        {"name": "Root", "sha256": ca_pki.root.sha256, "url": u("/root.der")},
        {"name": "Unpinned", "url": u("/inter.cer")},
        {"name": "Tampered", "sha256": ca_pki.root.sha256, "url": u("/tampered.der")},
        {"name": "Missing", "sha256": ca_pki.inter.sha256, "url": u("/missing.cer")},
        {"name": "Truncated", "sha256": ca_pki.root.sha256, "url": u("/truncated.der")},
        {"name": "Html", "sha256": ca_pki.inter.sha256, "url": u("/page.html")},
        {"name": "Slow", "sha256": ca_pki.root.sha256, "url": u("/slow.der")},
        {"name": "Loop", "sha256": ca_pki.root.sha256, "url": u("/loop-a")},
        {"name": "Expired", "sha256": ca_pki.expired.sha256, "url": u("/expired.der")},
        {"name": "Future", "sha256": ca_pki.future.sha256, "url": u("/future.der")},
        {"name": "NonCA", "sha256": ca_pki.non_ca.sha256, "url": u("/nonca.der")},
        {"name": "Forged", "sha256": ca_pki.forged.sha256, "url": u("/forged.der")},
        {"name": "Orphan", "sha256": ca_pki.orphan.sha256, "url": u("/orphan.der")},
    ]}
    res = run_module(args)
    assert res["failed"] is True and res["changed"] is False
    assert res["error_kinds"] == {
        "Unpinned": "pin_missing", "Tampered": "pin_mismatch", "Missing": "http_status", "Truncated": "truncated",
        "Html": "html", "Slow": "timeout", "Loop": "redirect_loop", "Expired": "expired", "Future": "not_yet_valid",
        "NonCA": "not_ca", "Forged": "chain", "Orphan": "chain",
    }
    errors = {n: e for e in res["errors"] for n in res["error_kinds"] if e.startswith(f"CA '{n}'")}
    assert len(errors) == len(res["errors"]) == 12
    assert errors["Unpinned"].startswith("CA 'Unpinned' has no sha256 pin: an unpinned certificate is never trusted.")
    assert errors["Tampered"].startswith(f"CA 'Tampered': {u('/tampered.der')}: SHA-256 fingerprint mismatch: "
                                         f"expected {ca_pki.root.sha256_colon}, got ")
    assert errors["Missing"] == f"CA 'Missing': {u('/missing.cer')}: HTTP 404 Not Found"
    assert errors["Truncated"].startswith(f"CA 'Truncated': {u('/truncated.der')}: truncated body: received ")
    assert errors["Html"].startswith(f"CA 'Html': {u('/page.html')}: the server returned an HTML page")
    assert errors["Slow"] == f"CA 'Slow': {u('/slow.der')}: timed out after 1s"
    assert errors["Loop"].startswith(f"CA 'Loop': {u('/loop-a')}: redirect loop: ")
    assert errors["Expired"].startswith(f"CA 'Expired' (CN=Test Expired CA,O=tokentrust lab,C=FR, from "
                                        f"{u('/expired.der')}) refused: expired on ")
    assert errors["Forged"].endswith("'Root': signature does not verify with its key")
    assert res["msg"] == "12 CA certificates refused, nothing was trusted: " + " | ".join(res["errors"])
    assert not dest.exists()  # nothing cached, not even the good root


@pytest.mark.parametrize("args, message", [
    ({"cas": []}, "missing required arguments: dest"),
    ({"dest": "/tmp/x", "cas": [{"sha256": "AA"}]}, "missing required arguments: name found in cas"),
    ({"dest": "/tmp/x", "cas": [{"name": "R", "sha256": "AA", "url": "x"}], "ca_path": "/nonexistent.pem"},
     "ca_bundle: ca_path /nonexistent.pem is not a readable file (a PEM bundle of HTTPS issuers)"),
    ({"dest": "/tmp/x", "cas": [{"name": "R", "sha256": "AA", "path": "/x"}]},
     "1 CA certificate refused, nothing was trusted: CA 'R': invalid sha256 pin: a SHA-256 fingerprint has 64 hex "
     "digits, got 2: 'AA'"),
])
def test_module_bad_parameters(args, message):
    res = run_module(args)
    assert res["failed"] is True
    assert res["msg"] == message


def test_module_https_verified_with_ca_path(ca_https, ca_pki, tmp_path):  # noqa: F811
    cas = [{"name": "Root", "sha256": ca_pki.root.sha256, "url": ca_https.url("/root.pem")}]
    refused = run_module({"dest": str(tmp_path / "a"), "cas": cas})
    assert refused["error_kinds"] == {"Root": "tls"}
    ok = run_module({"dest": str(tmp_path / "b"), "cas": cas, "ca_path": ca_https.ca_file})
    assert ok["changed"] is True and ok["cas"][0]["sha256"] == ca_pki.root.sha256


# ----------------------------------------------------------------------------- the role, through ca.yml

WRAPPER = """
- name: Everything the lead will append after the CA stage
  import_playbook: {site}

- name: A host play after the CA stage (test only)
  hosts: all
  gather_facts: false
  tasks:
    - name: Leave a marker with the CA set this host received
      ansible.builtin.copy:
        dest: "{marks}/{{{{ inventory_hostname }}}}.json"
        content: "{{{{ tokentrust_ca_set | to_json }}}}"
        mode: "0644"
"""


@pytest.fixture
def fleet(tmp_path):
    """Three local-connection hosts, a wrapper playbook around ca.yml, a marker directory."""
    marks = tmp_path / "marks"
    marks.mkdir()
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {
        "hosts": {h: {"ansible_connection": "local"} for h in ("ws1", "ws2", "ws3")},
        "vars": {"ansible_python_interpreter": sys.executable},
    }}))
    wrapper = tmp_path / "wrapper.yml"
    wrapper.write_text(WRAPPER.format(site=SITE, marks=marks))

    def run(extra: dict, *flags):
        ev = tmp_path / "vars.json"
        ev.write_text(json.dumps(extra))
        proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", str(inv), str(wrapper), "-e", f"@{ev}",
                               *flags], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            pytest.fail(f"no JSON from ansible-playbook (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.returncode, out

    run.marks = marks
    run.tmp = tmp_path
    return run


def _task(out, play, name_end):
    for t in out["plays"][play]["tasks"]:
        if t["task"]["name"].endswith(name_end):
            return t
    raise AssertionError(f"no task ending with {name_end!r} in play {play}")


def _good_list(ca_http, ca_pki):  # noqa: F811
    return [
        {"name": "Lab Root", "sha256": ca_pki.root.sha256_colon, "url": [ca_http.url("/root.der")]},
        {"name": "Lab Issuing", "sha256": ca_pki.inter.sha256, "url": [ca_http.url("/inter.pem")]},
        {"name": "Lab Old", "sha256": ca_pki.expired.sha256, "url": [ca_http.url("/expired.der")],
         "allow_expired": True},
    ]


def test_bad_pin_stops_before_any_host_task(fleet, ca_http, ca_pki):  # noqa: F811
    cas = _good_list(ca_http, ca_pki)
    cas[1]["sha256"] = ca_pki.other_root.sha256  # wrong pin for the issuing CA
    rc, out = fleet({"tokentrust_ca_list": cas, "ca_certificates_dest": str(fleet.tmp / "cache")})
    assert rc != 0
    fetch = _task(out, 0, "Fetch, pin-check and validate the CA set")
    (host, res), = fetch["hosts"].items()
    assert res["failed"] is True
    assert res["msg"] == (
        f"1 CA certificate refused, nothing was trusted: CA 'Lab Issuing': {ca_http.url('/inter.pem')}: SHA-256 "
        f"fingerprint mismatch: expected {ca_pki.other_root.sha256_colon}, got {ca_pki.inter.sha256_colon}. The "
        "certificate was tampered with or replaced, or the pin is wrong: nothing was trusted. Check the pin against "
        "the value the CA publishes through a second channel."
    )
    # no later play ran on any host: not a single task result, no marker, no cache
    assert len(out["plays"]) == 1
    assert os.listdir(fleet.marks) == []
    assert not (fleet.tmp / "cache").exists()
    assert out["plays"][0]["play"]["name"].startswith("CA certificates | ")
    names = [t["task"]["name"] for t in out["plays"][0]["tasks"]]
    assert names[-1] == "ca_certificates : CA certificates | Fetch, pin-check and validate the CA set"
    # the play includes the role once (run_once), then only the role's own tasks ran
    assert names[0] == "CA certificates | The ca_certificates role, once for every host", names
    assert all(n.startswith("ca_certificates : ") for n in names[1:]), names
    # the run_once task failed on the first host; any_errors_fatal broke the whole playbook; nothing changed
    # (the other hosts ran no task at all: the role is included once, so they may be absent from the stats)
    stats = {h: (s["failures"], s["changed"]) for h, s in out["stats"].items()}
    assert stats.pop(host) == (1, 0) and set(stats) <= {"ws1", "ws2", "ws3"}, out["stats"]
    assert all(v == (0, 0) for v in stats.values()), out["stats"]


def test_good_pins_publish_the_set_to_every_host_and_rerun_changes_nothing(fleet, ca_http, ca_pki):  # noqa: F811
    extra = {"tokentrust_ca_list": _good_list(ca_http, ca_pki), "ca_certificates_dest": str(fleet.tmp / "cache")}
    rc, out = fleet(extra, "--check")
    assert rc == 0
    assert not (fleet.tmp / "cache").exists()  # check mode writes nothing

    rc, out = fleet(extra)
    assert rc == 0, json.dumps(out)[:3000]
    assert _task(out, 0, "Fetch, pin-check and validate the CA set")["hosts"]
    assert sorted(os.listdir(fleet.marks)) == ["ws1.json", "ws2.json", "ws3.json"]
    sets = [json.loads((fleet.marks / f"ws{i}.json").read_text()) for i in (1, 2, 3)]
    assert sets[0] == sets[1] == sets[2]
    assert [(c["name"], c["role"], c["nss_trust"], c["windows_store"], c["expired"]) for c in sets[0]] == [
        ("Lab Root", "root", "C,,", "Root", False),
        ("Lab Issuing", "intermediate", ",,", "CA", False),
        ("Lab Old", "intermediate", ",,", "CA", True),
    ]
    assert sets[0][2]["warnings"][0].startswith("CA 'Lab Old' EXPIRED on ")
    for c in sets[0]:
        assert os.path.isfile(c["pem_path"]) and os.path.isfile(c["der_path"])
        assert openssl_sha256(c["der_path"], der=True) == c["sha256"]
    ca_stats_changed = out["stats"]["ws1"]["changed"]
    assert ca_stats_changed >= 1

    ca_http.log.clear()
    rc, out = fleet(extra)
    assert rc == 0
    fetch = _task(out, 0, "Fetch, pin-check and validate the CA set")
    assert [r["changed"] for r in fetch["hosts"].values()] == [False]
    assert ca_http.log == []
    # only the test's marker play may report changes (it rewrites nothing either: same content)
    assert all(s["changed"] == 0 for s in out["stats"].values()), out["stats"]


def test_default_profile_refuses_unpinned_cas_and_says_how(fleet):
    rc, out = fleet({"ca_certificates_offline": True, "ca_certificates_dest": str(fleet.tmp / "cache")})
    assert rc != 0
    res = next(iter(_task(out, 0, "Fetch, pin-check and validate the CA set")["hosts"].values()))
    assert res["error_kinds"] == {
        "CertEurope Root CA": "pin_missing", "Certeurope Root CA 2": "offline",
        "CertEurope Advanced CA V3": "offline", "AC CertEurope Classe 3 Plus V2": "pin_missing"}
    assert res["errors"][0] == (
        "CA 'CertEurope Root CA' has no sha256 pin: an unpinned certificate is never trusted. Obtain the certificate, "
        "compute its fingerprint with 'openssl x509 -in FILE -noout -fingerprint -sha256', compare it with the value "
        "the CA publishes through a second channel (its website over HTTPS, its CPS, a signed letter), then set it as "
        "'sha256' of this CA (ca_certificates_pins: {'CertEurope Root CA': 'AA:BB:...'} or in ca_certificates_list)."
    )
    assert os.listdir(fleet.marks) == []


def test_pins_for_unknown_cas_are_refused(fleet):
    rc, out = fleet({"ca_certificates_pins": {"Certeurope Root CA 3": "00" * 32},
                     "ca_certificates_dest": str(fleet.tmp / "cache")})
    assert rc != 0
    res = next(iter(_task(out, 0, "Check that pins and overrides name CAs of the set")["hosts"].values()))
    assert res["msg"] == (
        "ca_certificates_pins / ca_certificates_overrides name CAs that are not in the set: Certeurope Root CA 3. "
        "The CAs of the set are: CertEurope Root CA, Certeurope Root CA 2, CertEurope Advanced CA V3, "
        "AC CertEurope Classe 3 Plus V2."
    )
    assert os.listdir(fleet.marks) == []


def test_profile_pins_and_overrides_reach_the_module(fleet, ca_http, ca_pki):  # noqa: F811
    """tokentrust_ca_profile + pins/overrides: a one-CA profile is not built in, so the lab list is used as profile
    data through overrides of the certeurope names (urls to 127.0.0.1, lab pins)."""
    u = ca_http.url
    overrides = {
        "CertEurope Root CA": {"url": [u("/root.der")]},
        "Certeurope Root CA 2": {"url": [u("/root.pem")]},
        "CertEurope Advanced CA V3": {"url": [u("/inter.cer")], "allow_expired": False},
        "AC CertEurope Classe 3 Plus V2": {"url": [u("/bundle.p7b")], "nss_trust": "c,,"},
    }
    pins = {"CertEurope Root CA": ca_pki.root.sha256, "Certeurope Root CA 2": ca_pki.root.sha256,
            "CertEurope Advanced CA V3": ca_pki.inter.sha256, "AC CertEurope Classe 3 Plus V2": ca_pki.inter.sha256}
    rc, out = fleet({"tokentrust_ca_profile": "certeurope", "ca_certificates_overrides": overrides,
                     "ca_certificates_pins": pins, "ca_certificates_dest": str(fleet.tmp / "cache")})
    res = next(iter(_task(out, 0, "Fetch, pin-check and validate the CA set")["hosts"].values()))
    # the same certificate under two names is fine for the module; what matters here is the plumbing
    assert rc == 0, res.get("msg")
    assert [(c["name"], c["sha256"], c["nss_trust"]) for c in res["cas"]] == [
        ("CertEurope Root CA", ca_pki.root.sha256, "C,,"),
        ("Certeurope Root CA 2", ca_pki.root.sha256, "C,,"),
        ("CertEurope Advanced CA V3", ca_pki.inter.sha256, ",,"),
        ("AC CertEurope Classe 3 Plus V2", ca_pki.inter.sha256, "c,,"),
    ]
