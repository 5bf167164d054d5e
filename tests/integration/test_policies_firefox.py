"""Real-browser proof of the policy path alone (issue 4, item 6 second part).

policies.json is written by our `firefox_policies` module (through `ansible`) with Certificates.Install
(a CA made by lab.pki) and SecurityDevices.Add (SoftHSM2's PKCS#11 library); then a NEW profile is
started in real Firefox ESR, headless, and `certutil` / `modutil` show the CA and the module in it.

Nothing on the machine is touched: Firefox reads `<install dir>/distribution/policies.json` only when
/etc/firefox/policies/policies.json does not exist, and the install dir is the directory of the
running binary. So the test builds a private "symlink farm" of /usr/lib/firefox-esr (every entry a
symlink, except a copied `firefox-esr` binary, so /proc/self/exe points into the farm, and a real
`distribution/` dir) and writes policies.json there. If a system policies.json exists, it would win
over ours: the test then skips instead of touching it.

The precedence itself is proven without touching /etc either: Firefox runs in a private mount
namespace (`unshare -m`) where /etc is an overlay whose upper dir holds firefox/policies/policies.json.

Trust bits: Firefox ESR 153 bundles NSS >= 3.115, which stores trust as PKCS#11 3.2 CKO_TRUST objects;
Debian 12's certutil (NSS 3.87) does not understand them and shows ",,". The trust check therefore
runs certutil against Firefox's own NSS libraries (LD_LIBRARY_PATH=<firefox dir>).
"""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from .test_policies_module import SOFTHSM, run_module

FIREFOX_DIR = "/usr/lib/firefox-esr"
FIREFOX_BIN = os.path.join(FIREFOX_DIR, "firefox-esr")
SYSTEM_POLICIES = "/etc/firefox/policies/policies.json"

pytestmark = [
    pytest.mark.firefox,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(FIREFOX_BIN), reason="firefox-esr not installed"),
    pytest.mark.skipif(not shutil.which("certutil") or not shutil.which("modutil"), reason="libnss3-tools missing"),
    pytest.mark.skipif(not os.path.exists(SOFTHSM), reason="softhsm2 not installed"),
    pytest.mark.skipif(os.path.exists(SYSTEM_POLICIES),
                       reason=f"{SYSTEM_POLICIES} exists and would win over the private distribution/policies.json"),
]


def make_farm(dest):
    """A private Firefox install: symlinks to every file of /usr/lib/firefox-esr, own binary and distribution/."""
    os.makedirs(dest)
    for name in os.listdir(FIREFOX_DIR):
        if name in ("distribution", "firefox-esr", "firefox-bin"):
            continue
        os.symlink(os.path.join(FIREFOX_DIR, name), os.path.join(dest, name))
    shutil.copy2(FIREFOX_BIN, os.path.join(dest, "firefox-esr"))
    os.symlink("firefox-esr", os.path.join(dest, "firefox-bin"))
    os.mkdir(os.path.join(dest, "distribution"))
    return dest


def certutil_list(profile, firefox_nss=False):
    env = dict(os.environ)
    if firefox_nss:
        env["LD_LIBRARY_PATH"] = FIREFOX_DIR
    p = subprocess.run(["certutil", "-L", "-d", f"sql:{profile}"], capture_output=True, text=True, env=env, timeout=30)
    return p.stdout


def modutil_list(profile):
    p = subprocess.run(["modutil", "-list", "-dbdir", f"sql:{profile}"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    return p.stdout


def run_firefox_until(farm, profile, done, timeout=90, etc_upper=None):
    """Start headless Firefox on `profile`; poll `done()` until true or timeout; quit gracefully (SIGTERM).

    `etc_upper`: run Firefox in a private mount namespace where /etc is an overlay with this upper dir,
    so files put there (e.g. firefox/policies/policies.json) exist for this Firefox only.
    """
    env = dict(os.environ, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1")
    env.pop("DISPLAY", None)
    log = open(os.path.join(os.path.dirname(profile), os.path.basename(profile) + ".log"), "wb")
    cmd = [os.path.join(farm, "firefox-esr"), "--headless", "--no-remote", "-profile", profile, "about:blank"]
    if etc_upper:
        cmd = overlay_etc_cmd(etc_upper, cmd)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ok = False
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if done():
                ok = True
                break
            time.sleep(1)
        # a little time for the other policies to finish, then a clean quit
        time.sleep(2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
    return ok


def overlay_etc_cmd(upper, cmd):
    work = upper.rstrip("/") + ".work"
    os.makedirs(work, exist_ok=True)
    script = ('mount -t overlay overlay -o lowerdir=/etc,upperdir="$1",workdir="$2" /etc && shift 2 && exec "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", upper, work, *cmd]


def can_overlay_etc(tmp):
    upper = os.path.join(tmp, "probe-upper")
    os.makedirs(upper)
    try:
        p = subprocess.run(overlay_etc_cmd(upper, ["true"]), capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


@pytest.fixture
def ca(tmp_path):
    from lab.pki import make_ca

    c = make_ca("Policy Path Test CA")
    d = tmp_path / "share" / "tokentrust" / "ca"
    d.mkdir(parents=True)
    p = d / "policy-path-test-ca.pem"
    p.write_bytes(c.pem)
    return str(p), c


def test_new_profile_gets_ca_and_module_from_policies(tmp_path, ca):
    ca_path, ca_cert = ca
    farm = make_farm(str(tmp_path / "firefox"))
    nick = "Policy Path Test CA - tokentrust lab"

    # negative control: same private install without policies.json -> nothing in a new profile
    control = str(tmp_path / "control-profile")
    os.mkdir(control)
    run_firefox_until(farm, control, lambda: os.path.exists(os.path.join(control, "pkcs11.txt")), timeout=60)
    assert os.path.exists(os.path.join(control, "cert9.db")), "Firefox did not start on the control profile"
    assert nick not in certutil_list(control)
    assert SOFTHSM not in modutil_list(control)

    # policies.json written by our module into the private install's distribution/ dir
    r = run_module("firefox_policies", {"location": "distribution", "install_dir": farm,
                                        "certificates": [ca_path], "devices": {"gem": SOFTHSM}})
    assert r["changed"] is True, r
    policies_file = os.path.join(farm, "distribution", "policies.json")
    assert r["path"] == policies_file
    assert json.load(open(policies_file))["policies"]["Certificates"]["Install"] == [ca_path]

    # a NEW profile, created after policies.json was written
    profile = str(tmp_path / "new-profile")
    os.mkdir(profile)

    def provisioned():
        return nick in certutil_list(profile) and SOFTHSM in modutil_list(profile)

    assert run_firefox_until(farm, profile, provisioned), (
        "Firefox did not apply the policies in time:\n" + certutil_list(profile) + modutil_list(profile))

    # after Firefox quit: still there, checked with the NSS tools
    listing = certutil_list(profile)
    assert nick in listing
    mods = modutil_list(profile)
    assert "gem" in mods and f"library name: {SOFTHSM}" in mods
    # trust bits, read with Firefox's own (newer) NSS which understands its CKO_TRUST objects
    ff_listing = certutil_list(profile, firefox_nss=True)
    line = next(ln for ln in ff_listing.splitlines() if ln.startswith(nick))
    assert line.split()[-1].startswith("CT,"), ff_listing
    # and it is the very certificate we generated
    pem = subprocess.run(["certutil", "-L", "-d", f"sql:{profile}", "-n", nick, "-a"], capture_output=True,
                         timeout=30).stdout
    assert pem.replace(b"\r\n", b"\n").strip() == ca_cert.pem.strip()


def test_system_policies_win_over_distribution(tmp_path, ca):
    """/etc/firefox/policies/policies.json (here in a private /etc overlay) is read INSTEAD of distribution/."""
    from lab.pki import make_ca

    if not shutil.which("unshare") or not can_overlay_etc(str(tmp_path)):
        pytest.skip("cannot make a private mount namespace with an /etc overlay here")
    dist_ca_path, _ = ca
    sys_ca = make_ca("System Policies CA")
    sys_ca_path = tmp_path / "system-policies-ca.pem"
    sys_ca_path.write_bytes(sys_ca.pem)
    farm = make_farm(str(tmp_path / "firefox"))
    upper = str(tmp_path / "etc-upper")

    r = run_module("firefox_policies", {"location": "distribution", "install_dir": farm,
                                        "certificates": [dist_ca_path], "devices": {"gem": SOFTHSM}})
    assert r["changed"] is True
    r = run_module("firefox_policies", {"path": os.path.join(upper, "firefox/policies/policies.json"),
                                        "certificates": [str(sys_ca_path)]})
    assert r["changed"] is True
    assert not os.path.exists(SYSTEM_POLICIES), "the real /etc must not be touched"

    profile = str(tmp_path / "profile")
    os.mkdir(profile)
    sys_nick = "System Policies CA - tokentrust lab"
    assert run_firefox_until(farm, profile, lambda: sys_nick in certutil_list(profile), etc_upper=upper), (
        "Firefox did not import the CA of /etc/firefox/policies/policies.json:\n" + certutil_list(profile))
    listing = certutil_list(profile)
    assert sys_nick in listing
    assert "Policy Path Test CA" not in listing, "distribution/policies.json must not be read when /etc has one"
    assert SOFTHSM not in modutil_list(profile)
    assert not os.path.exists(SYSTEM_POLICIES)
