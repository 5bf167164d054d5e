"""The USB key stand-in: a SoftHSM2 token behind pin_guard, checked with tools we did not write.

pkcs11-tool (OpenSC) drives the token through pin_guard; flags are read through the module in a
separate process (lab.token.token_info) and by pkcs11-tool -T; NSS (modutil, certutil, tstclnt)
loads pin_guard like Firefox does. Each test makes its own token in a temporary directory.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from lab import token as labtoken
from lab.pki import certeurope_standin, make_leaf
from lab.testpage import TestPage, make_server_identity

pytestmark = pytest.mark.skipif(
    not (shutil.which("softhsm2-util") and shutil.which("pkcs11-tool") and shutil.which("gcc")),
    reason="needs softhsm2, opensc and gcc",
)

LOW, FINAL, LOCKED = labtoken.CKF_USER_PIN_COUNT_LOW, labtoken.CKF_USER_PIN_FINAL_TRY, labtoken.CKF_USER_PIN_LOCKED
SO_LOW, SO_FINAL, SO_LOCKED = labtoken.CKF_SO_PIN_COUNT_LOW, labtoken.CKF_SO_PIN_FINAL_TRY, labtoken.CKF_SO_PIN_LOCKED


@pytest.fixture(scope="module")
def pki():
    return certeurope_standin()


@pytest.fixture
def tok(tmp_path, pki):
    return labtoken.create_token(tmp_path / "token", pki=pki)


def p11(tok, *args, check=True):
    """pkcs11-tool through the token's pin_guard module; returns (rc, combined output)."""
    proc = subprocess.run(["pkcs11-tool", "--module", str(tok.module), *args], capture_output=True, text=True,
                          check=False)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"pkcs11-tool {' '.join(args)} failed: {out}")
    return proc.returncode, out


def login(tok, pin):
    return p11(tok, "--login", "--pin", pin, "--list-objects", check=False)


def so_init_pin(tok, puk, new_pin):
    return p11(tok, "--login", "--login-type", "so", "--so-pin", puk, "--init-pin", "--pin", new_pin, check=False)


def pin_flags(tok):
    return labtoken.token_info(tok)["flags"] & labtoken.PIN_FLAG_MASK


def tool_flags(tok):
    """The token flags as pkcs11-tool -T prints them (an independent reading)."""
    _, out = p11(tok, "-T")
    m = re.search(r"token flags\s*:\s*(.*)", out)
    return m.group(1)


# ---- what is on the token -----------------------------------------------------------------


def test_token_holds_the_two_certificates_and_rsa_keys_of_the_real_key(tok):
    info = labtoken.token_info(tok)
    assert info["label"] == "CERTEUROPE LAB"
    assert info["flags"] & labtoken.CKF_TOKEN_INITIALIZED and info["flags"] & labtoken.CKF_USER_PIN_INITIALIZED
    assert info["pin_flags"] == []

    _, public = p11(tok, "--list-objects")
    assert "Private Key Object" not in public  # keys are private: login needed
    assert public.count("Certificate Object") == 2

    _, out = p11(tok, "--login", "--pin", tok.pin, "--list-objects")
    blocks = [b for b in re.split(r"\n(?=\S)", out) if "Object" in b]
    certs = [b for b in blocks if b.startswith("Certificate Object")]
    keys = [b for b in blocks if b.startswith("Private Key Object; RSA")]
    pubs = [b for b in blocks if b.startswith("Public Key Object; RSA 2048 bits")]
    assert len(certs) == 2 and len(keys) == 2 and len(pubs) == 2

    def ids_labels(bs):
        return sorted((re.search(r"ID:\s*(\S+)", b).group(1), re.search(r"label:\s*(.+)", b).group(1).strip())
                      for b in bs)

    assert ids_labels(certs) == ids_labels(keys)  # NSS pairs a certificate with its key by CKA_ID
    assert {lbl for _, lbl in ids_labels(certs)} == {
        "JEAN DUPONT (Lab Advanced CA V3)", "JEAN DUPONT (Lab Classe 3 Plus V2)"}
    for b in keys:
        assert "sign" in b and "sensitive" in b

    # the certificates themselves: holder and issuers, read back from the token as DER
    issuers = set()
    for obj in tok.objects:
        der_path = Path(tok.root) / f"{obj.id_hex}.der"
        p11(tok, "--read-object", "--type", "cert", "--id", obj.id_hex, "--output-file", str(der_path))
        cert = x509.load_der_x509_certificate(der_path.read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "JEAN DUPONT"
        assert cert.public_key().key_size == 2048
        issuers.add(cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
        assert obj.id_hex == cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    assert issuers == {"Lab Advanced CA V3", "Lab Classe 3 Plus V2"}


def test_spare_softhsm_slot_is_hidden_like_a_single_key(tok):
    _, out = p11(tok, "--list-slots")
    assert out.count("token label") == 1 and "CERTEUROPE LAB" in out
    # SoftHSM2 itself shows its spare uninitialised slot too
    proc = subprocess.run(["softhsm2-util", "--show-slots"], env=tok.env(), capture_output=True, text=True, check=True)
    assert len(re.findall(r"^Slot \d+", proc.stdout, re.M)) == 2


# ---- the PIN policy -------------------------------------------------------------------------


def test_three_wrong_pins_lock_and_a_correct_pin_is_then_refused(tok):
    expected = [(1, LOW, "user PIN count low"), (2, LOW | FINAL, "final user PIN try"),
                (3, LOW | LOCKED, "user PIN locked")]
    for n, flags, words in expected:
        rc, out = login(tok, "0000")
        assert rc != 0 and "CKR_PIN_INCORRECT" in out
        assert tok.counters() == (n, 0)
        assert pin_flags(tok) == flags
        assert words in tool_flags(tok)
    rc, out = login(tok, tok.pin)  # the right PIN: refused, SoftHSM2 is not even asked
    assert rc != 0 and "CKR_PIN_LOCKED" in out
    rc, out = login(tok, "0000")  # and a wrong one does not count beyond the lock
    assert "CKR_PIN_LOCKED" in out
    assert tok.counters() == (3, 0)
    assert pin_flags(tok) == LOW | LOCKED


def test_correct_pin_resets_the_counter(tok):
    login(tok, "0000")
    login(tok, "0000")
    assert pin_flags(tok) == LOW | FINAL
    rc, out = login(tok, tok.pin)
    assert rc == 0, out
    assert tok.counters() == (0, 0)
    assert pin_flags(tok) == 0
    assert "count low" not in tool_flags(tok)


def test_puk_unblocks_a_locked_pin(tok):
    for _ in range(3):
        login(tok, "0000")
    assert pin_flags(tok) & LOCKED
    rc, out = so_init_pin(tok, tok.puk, "4321")  # PUK = SO PIN, then C_InitPIN
    assert rc == 0, out
    assert tok.counters() == (0, 0)
    assert pin_flags(tok) == 0
    assert login(tok, "4321")[0] == 0
    rc, out = login(tok, tok.pin)  # the old PIN is gone (and that costs one try)
    assert "CKR_PIN_INCORRECT" in out and tok.counters() == (1, 0)


def test_three_wrong_puks_lock_for_good(tok):
    expected = [(1, SO_LOW, "SO PIN count low"), (2, SO_LOW | SO_FINAL, "final SO PIN try"),
                (3, SO_LOW | SO_LOCKED, "SO PIN locked")]
    for n, flags, words in expected:
        rc, out = so_init_pin(tok, "87654321", "4321")
        assert rc != 0 and "CKR_PIN_INCORRECT" in out
        assert tok.counters() == (0, n)
        assert pin_flags(tok) == flags
        assert words in tool_flags(tok)
    rc, out = so_init_pin(tok, tok.puk, "4321")  # the right PUK: refused
    assert rc != 0 and "CKR_PIN_LOCKED" in out
    rc, out = p11(tok, "--init-token", "--label", "AGAIN", "--so-pin", tok.puk, check=False)
    assert rc != 0  # no way around a blocked PUK, not even re-initialising the token
    assert labtoken.token_info(tok)["label"] == "CERTEUROPE LAB"
    assert login(tok, tok.pin)[0] == 0  # the user PIN still works (until it is blocked too)
    for _ in range(3):
        login(tok, "0000")
    assert pin_flags(tok) == LOW | LOCKED | SO_LOW | SO_LOCKED
    assert "CKR_PIN_LOCKED" in so_init_pin(tok, tok.puk, "4321")[1]  # blocked for good


def test_wrong_old_pin_in_pin_change_counts(tok):
    rc, out = p11(tok, "--login", "--pin", "0000", "--change-pin", "--new-pin", "5678", check=False)
    assert rc != 0
    assert tok.counters()[0] >= 1
    n = tok.counters()[0]
    rc, out = p11(tok, "--change-pin", "--pin", "0000", "--new-pin", "5678", check=False)  # C_SetPIN, wrong old
    assert rc != 0 and tok.counters()[0] == n + 1
    rc, out = p11(tok, "--change-pin", "--pin", tok.pin, "--new-pin", "5678", check=False)
    assert rc == 0, out
    assert tok.counters() == (0, 0)
    assert login(tok, "5678")[0] == 0


def test_counters_persist_across_processes_in_the_state_file(tok):
    login(tok, "0000")  # process 1: pkcs11-tool
    assert labtoken.token_info(tok)["pin_flags"] == ["user_pin_count_low"]  # process 2: ctypes
    lines = [ln for ln in tok.state.read_text().splitlines() if not ln.startswith("#")]
    assert lines == [f"{tok.serial()} 1 0"]
    login(tok, "0000")  # process 3
    assert "final user PIN try" in tool_flags(tok)  # process 4
    assert not list(tok.state.parent.glob("pin_guard.state.tmp*"))  # atomic write left nothing behind
    tok.reset_counters()  # lab-only escape hatch
    assert pin_flags(tok) == 0


def test_state_file_from_environment_and_tries_from_config(tmp_path, pki):
    tok = labtoken.create_token(tmp_path / "t", pki=pki, max_user_tries=5, holders=[])
    for _ in range(4):
        login(tok, "0000")
    assert pin_flags(tok) == LOW | FINAL  # 5 tries: the 4th wrong PIN leaves the final try
    # the plain build, without a pin_guard.conf next to it: configured by the environment
    plain = labtoken.build_pin_guard()
    state = tmp_path / "elsewhere.state"
    env = dict(tok.env(), PIN_GUARD_STATE=str(state), PIN_GUARD_MAX_USER_TRIES="2")
    proc = subprocess.run(["pkcs11-tool", "--module", str(plain), "--login", "--pin", "0000", "-O"], env=env,
                          capture_output=True, text=True, check=False)
    assert "CKR_PIN_INCORRECT" in proc.stdout + proc.stderr
    assert state.read_text().splitlines()[-1] == f"{tok.serial()} 1 0"
    info = labtoken.token_info(plain, env=env)
    assert info["flags"] & labtoken.PIN_FLAG_MASK == LOW | FINAL  # 2 tries: one left


def test_missing_real_module_is_a_clear_error(tmp_path, tok):
    (tok.root / "pin_guard.conf").write_text(f"module = {tmp_path}/nope.so\nsofthsm2_conf = {tok.conf}\n")
    proc = subprocess.run(["pkcs11-tool", "--module", str(tok.module), "-L"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0
    assert f"pin_guard: cannot load the wrapped module {tmp_path}/nope.so" in proc.stderr


# ---- NSS loads pin_guard like Firefox does -----------------------------------------------------


@pytest.fixture
def nssdb(tmp_path, tok):
    db = tmp_path / "nssdb"
    db.mkdir()
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["modutil", "-dbdir", f"sql:{db}", "-add", "guard", "-libfile", str(tok.module), "-force"],
                   check=True, capture_output=True, input=b"\n")
    pw = tmp_path / "pin.txt"
    pw.write_text(tok.pin + "\n")
    return db, pw


def test_nss_modutil_and_certutil_see_the_token_through_pin_guard(tok, nssdb):
    db, pw = nssdb
    out = subprocess.run(["modutil", "-dbdir", f"sql:{db}", "-list"], check=True, capture_output=True,
                         text=True).stdout
    assert f"library name: {tok.module}" in out
    assert "token: CERTEUROPE LAB" in out
    guard = out.split("guard", 1)[1]
    assert "1 slot attached" in guard
    out = subprocess.run(["certutil", "-d", f"sql:{db}", "-L", "-h", "all", "-f", str(pw)], check=True,
                         capture_output=True, text=True).stdout
    assert re.search(r"CERTEUROPE LAB:JEAN DUPONT \(Lab Advanced CA V3\)\s+u,u,u", out)
    assert re.search(r"CERTEUROPE LAB:JEAN DUPONT \(Lab Classe 3 Plus V2\)\s+u,u,u", out)  # u = key on token
    out = subprocess.run(["certutil", "-d", f"sql:{db}", "-K", "-h", "CERTEUROPE LAB", "-f", str(pw)], check=True,
                         capture_output=True, text=True).stdout
    assert out.count("rsa") == 2
    assert tok.counters() == (0, 0)


@pytest.mark.skipif(not shutil.which("tstclnt"), reason="needs tstclnt (libnss3-tools)")
def test_nss_tls_client_auth_with_the_key_on_the_token(tmp_path, pki, tok, nssdb):
    db, pw = nssdb
    cas = []
    for name in ("Lab Root CA 2", "Lab Advanced CA V3", "Lab Root CA", "Lab Classe 3 Plus V2"):
        p = tmp_path / f"{name}.pem"
        p.write_bytes(pki[name].pem)
        cas.append(p)
    ident = make_server_identity(tmp_path / "srv")
    subprocess.run(["certutil", "-A", "-d", f"sql:{db}", "-n", "lab tls", "-t", "C,,", "-i", str(ident["ca"])],
                   check=True)
    req = tmp_path / "request.txt"  # a file, not a pipe: tstclnt spins on a closed stdin pipe
    req.write_bytes(b"GET / HTTP/1.0\r\n\r\n")
    with TestPage(ident["cert"], ident["key"], cas) as page:
        for obj in tok.objects:
            with open(req, "rb") as stdin:
                proc = subprocess.run(
                    ["tstclnt", "-h", "127.0.0.1", "-p", str(page.port), "-d", f"sql:{db}",
                     "-n", f"CERTEUROPE LAB:{obj.label}", "-W", str(pw)],
                    stdin=stdin, capture_output=True, timeout=60, check=False)
            body = proc.stdout.decode("utf-8", "replace")
            assert "Votre certificat est valide" in body, proc.stderr.decode()[-800:]
            assert '<p id="holder">JEAN DUPONT</p>' in body
        seen = [e for e in page.entries() if e["event"] == "request"]
    assert [e["serial"] for e in seen] == [format(o.serial, "X") for o in tok.objects]
    assert {e["status"] for e in seen} == {"valid"}
    assert tok.counters() == (0, 0)


def test_add_certificate_puts_an_expired_one_on_the_token(tok, pki):
    import datetime as dt

    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
    old = make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True, key_type="rsa",
                    not_before=past, not_after=past + dt.timedelta(days=30))
    obj = tok.add_certificate(old, "JEAN DUPONT (expired)")
    _, out = p11(tok, "--login", "--pin", tok.pin, "--list-objects")
    assert out.count("Certificate Object") == 3 and out.count(f"ID:         {obj.id_hex}") == 3
    assert labtoken.LabToken.load(tok.root).objects[-1].label == "JEAN DUPONT (expired)"


def test_concurrent_wrong_pins_never_get_more_than_three_tries(tok):
    """Wrong PINs from several processes at once: no attempt is lost or added, the lock holds at three.

    SoftHSM2's file store itself is not made for concurrent processes: some of them may see "No slots" or
    CKR_GENERAL_ERROR from SoftHSM2 (a real key serialises through PC/SC); those never reach C_Login."""
    incorrect = 0
    for _ in range(10):
        procs = [subprocess.Popen(["pkcs11-tool", "--module", str(tok.module), "--login", "--pin", "0000", "-O"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        got = sum("CKR_PIN_INCORRECT" in o for o in outs)
        incorrect += got
        assert tok.counters() == (min(incorrect, 3), 0)  # every wrong PIN counted once
        assert incorrect <= 3
        if incorrect == 3:
            break
    assert incorrect == 3
    rc, out = login(tok, tok.pin)
    assert "CKR_PIN_LOCKED" in out and tok.counters() == (3, 0) and pin_flags(tok) == LOW | LOCKED
