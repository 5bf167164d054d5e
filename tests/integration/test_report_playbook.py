"""playbooks/report.yml on a real lab (3 workstations, profiles made by Firefox ESR, provisioned by site.yml), one
host broken on purpose, one needing attention; the page rendered by headless Firefox ESR (PNG + Marionette).

    lab-ws-01  provisioned, test login ok                    -> ok (green)
    lab-ws-02  a CA deleted from a profile (certutil -D), the module deleted (modutil -delete), its policies.json
               path points to nothing, test login failed     -> failed (red)
    lab-ws-03  policies.json registers gem with another library, no test login result -> warning (amber)
"""
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from lab import build
from tests.support.ansible_run import run_playbook

needs_firefox = pytest.mark.skipif(not shutil.which("firefox-esr"), reason="needs firefox-esr")
pytestmark = [needs_firefox, pytest.mark.firefox]
FIREFOX = shutil.which("firefox-esr") or "firefox-esr"


def recap(stdout):
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", stdout, re.M)}


def tree_digest(top):
    """sha256 of every file under `top` (content and mode): what "changes nothing" is checked against."""
    out = {}
    for root, _dirs, files in os.walk(top):
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                out[p] = "link:" + os.readlink(p)
                continue
            with open(p, "rb") as fh:
                out[p] = "%o:%s" % (os.stat(p).st_mode, hashlib.sha256(fh.read()).hexdigest())
    return out


def sql_profiles(m, host):
    h = next(x for x in m["hosts"] if x["name"] == host)
    return [p["path"] for p in h["profiles"] if (Path(p["path"]) / "cert9.db").exists()]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run, inv = tmp / "run", tmp / "inv"
    m = build.create(run, hosts=3, inventory=inv)
    try:
        tok = m["token"]["module"]
        pol = tmp / "etc" / "policies.json"
        (inv / "group_vars" / "all" / "provision.yml").write_text(
            "---\n" + "".join("%s: %s\n" % (k, json.dumps(v)) for k, v in {
                "firefox_policies_path": str(pol), "firefox_policies_ca_dir": str(tmp / "ca"),
                "firefox_policies_module_path": tok, "firefox_nss_module_library": tok,
                "firefox_nss_install_packages": False}.items()))
        p = run_playbook("playbooks/site.yml", str(inv))
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]

        # lab-ws-02: one profile loses a CA and the module; its policies.json is elsewhere (missing)
        broken = sql_profiles(m, "lab-ws-02")[0]
        subprocess.run(["certutil", "-D", "-n", "Lab Advanced CA V3", "-d", "sql:" + broken], check=True)
        subprocess.run(["modutil", "-delete", "gem", "-dbdir", "sql:" + broken, "-force"], check=True,
                       capture_output=True)
        hv = inv / "host_vars"
        hv.mkdir()
        (hv / "lab-ws-02.yml").write_text("---\nfirefox_policies_path: %s\n" % json.dumps(str(tmp / "none.json")))
        # lab-ws-03: its policies.json names another library for gem
        doc = json.loads(pol.read_text())
        doc["policies"]["SecurityDevices"]["Add"]["gem"] = "/usr/lib64/pkcs11/libgclib.so"
        (tmp / "etc" / "other.json").write_text(json.dumps(doc))
        (hv / "lab-ws-03.yml").write_text("---\nfirefox_policies_path: %s\n"
                                          % json.dumps(str(tmp / "etc" / "other.json")))

        # test-login results as playbooks/verify.yml writes them (reports/token/<host>.json)
        reports = tmp / "reports"
        (reports / "token").mkdir(parents=True)
        cert = {"holder": "JEAN DUPONT", "issuer": "CN=Lab Classe 3 Plus V2", "not_after": "2099-01-01T00:00:00Z",
                "days_left": 26700, "sha256": "AB" * 32}
        (reports / "token" / "lab-ws-01.json").write_text(json.dumps({
            "host": "lab-ws-01", "status": "ok", "holder": "JEAN DUPONT", "http_status": 200, "error": None,
            "url": m["testpage"]["url"], "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "certificates": [cert]}))
        (reports / "token" / "lab-ws-02.json").write_text(json.dumps({
            "host": "lab-ws-02", "status": "failed", "holder": None, "http_status": None,
            "error": "wrong PIN (2 tries left)", "certificates": []}))
        yield {"m": m, "tmp": tmp, "inv": inv, "reports": reports, "broken": broken}
    finally:
        build.destroy(run, inventory=inv)


@pytest.fixture(scope="module")
def reported(lab):
    before = tree_digest(lab["m"]["dir"] + "/homes")
    pol_before = tree_digest(str(lab["tmp"] / "etc"))
    p = run_playbook("playbooks/report.yml", str(lab["inv"]), extra_vars={"fleet_report_dest": str(lab["reports"])})
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    lab["recap"] = recap(p.stdout)
    lab["unchanged"] = (before == tree_digest(lab["m"]["dir"] + "/homes"),
                        pol_before == tree_digest(str(lab["tmp"] / "etc")))
    return lab


def test_report_is_read_only_on_the_hosts(reported):
    rc = reported["recap"]
    assert set(rc) == {"lab-ws-01", "lab-ws-02", "lab-ws-03", "localhost"}
    for h in ("lab-ws-01", "lab-ws-02", "lab-ws-03"):
        assert rc[h]["changed"] == 0 and rc[h]["failed"] == 0 and rc[h]["rescued"] == 0, rc
    assert rc["localhost"]["changed"] == 1  # the report files were written
    assert reported["unchanged"] == (True, True)  # every file of every home and policies.json byte for byte

    # a second run: same findings, nothing written anywhere
    p = run_playbook("playbooks/report.yml", str(reported["inv"]),
                     extra_vars={"fleet_report_dest": str(reported["reports"])})
    assert p.returncode == 0
    assert all(v["changed"] == 0 for v in recap(p.stdout).values()), p.stdout[-1500:]


def test_fleet_json(reported):
    doc = json.loads((reported["reports"] / "fleet.json").read_text())
    assert doc["format"] == "tokentrust-fleet-report/1"
    st = {h["name"]: h for h in doc["hosts"]}
    assert {k: v["status"] for k, v in st.items()} == {"lab-ws-01": "ok", "lab-ws-02": "failed",
                                                      "lab-ws-03": "warning"}
    assert [h["name"] for h in doc["hosts"]] == ["lab-ws-02", "lab-ws-03", "lab-ws-01"]  # worst first
    assert doc["summary"]["hosts"] == 3 and doc["summary"]["ok"] == 1 and doc["summary"]["failed"] == 1
    assert doc["summary"]["token_ok"] == 1 and doc["summary"]["token_failed"] == 1
    assert doc["summary"]["token_not_run"] == 1
    assert [c["name"] for c in doc["ca_set"]] == ["Lab Root CA 2", "Lab Advanced CA V3", "Lab Root CA",
                                                  "Lab Classe 3 Plus V2", "Lab TLS CA"]

    bad = [r["text"] for r in st["lab-ws-02"]["reasons"] if r["level"] == "failed"]
    prof = next(p for p in st["lab-ws-02"]["profiles"] if p["path"] == reported["broken"])
    assert prof["missing"] == ["Lab Advanced CA V3"] and prof["module_ok"] is False
    assert any(t.endswith("lacks CA Lab Advanced CA V3") and reported["broken"] in t for t in bad), bad
    assert any(t.startswith("module gem not registered in profile") for t in bad), bad
    assert "policies.json missing (%s)" % (reported["tmp"] / "none.json") in bad
    assert "test login failed: wrong PIN (2 tries left)" in bad
    # the other profile of the broken host is fine
    assert [p["status"] for p in st["lab-ws-02"]["profiles"] if p["path"] != reported["broken"]] == ["ok"]

    warn = [r["text"] for r in st["lab-ws-03"]["reasons"] if r["level"] == "warning"]
    assert warn == ["policies.json registers security device gem with /usr/lib64/pkcs11/libgclib.so, expected %s"
                    % reported["m"]["token"]["module"]]
    assert st["lab-ws-03"]["token"]["status"] == "not run"

    ok = st["lab-ws-01"]
    assert ok["counts"]["profiles"] == ok["counts"]["profiles_ok"] == 2
    assert ok["module"]["ok"] is True and ok["policies"]["ok"] is True
    assert ok["token"]["holder"] == "JEAN DUPONT" and ok["token"]["http_status"] == 200
    assert [r["level"] for r in ok["reasons"]] == [], ok["reasons"]


# ---------------------------------------------------------------------------------------------
# the page in a real browser
# ---------------------------------------------------------------------------------------------
def read_png(path):
    """A tiny PNG decoder (8-bit RGB/RGBA, not interlaced): returns (width, height, rows of (r, g, b))."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
    w, h, depth, ctype, _c, _f, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    rows = []
    i = 0
    for _ in range(h):
        ft = raw[i]
        line = bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ft == 1:
                line[x] = (line[x] + a) & 255
            elif ft == 2:
                line[x] = (line[x] + b) & 255
            elif ft == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return w, h, rows


def test_page_screenshot_not_blank(reported, tmp_path):
    html = reported["reports"] / "fleet.html"
    home, profile, png = tmp_path / "home", tmp_path / "profile", tmp_path / "out.png"
    profile.mkdir(parents=True)
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update(HOME=str(home), MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1", MOZ_DISABLE_NONLOCAL_CONNECTIONS="1")
    subprocess.run([FIREFOX, "--headless", "--no-remote", "--profile", str(profile), "--window-size=1400,1000",
                    "--screenshot", str(png), html.as_uri()], env=env, capture_output=True, timeout=120, check=False)
    assert png.exists() and png.stat().st_size > 10000
    w, h, rows = read_png(png)
    assert (w, h) == (1400, 1000)
    colours = {px for row in rows[::2] for px in row[::2]}
    assert len(colours) > 200, len(colours)
    # the status colours are on screen: green (ok), amber (attention), red (action needed)
    for rgb in ((0x1E, 0x8E, 0x3E), (0xE8, 0xA1, 0x0C), (0xD9, 0x30, 0x25)):
        assert rgb in colours, rgb
    shutil.copy(png, reported["reports"] / "fleet.png")  # for a human look


def test_page_in_firefox_marionette(reported, tmp_path):
    from marionette_driver import By

    from tests.support.firefox import Firefox

    profile = tmp_path / "mprofile"
    profile.mkdir()
    url = (reported["reports"] / "fleet.html").as_uri()
    rows_js = ("return Array.from(document.querySelectorAll('#hosts > tbody > tr')).map("
               "r => [r.dataset.host, r.dataset.status, r.cells[8].innerText])")
    with Firefox(profile, extra_prefs={"network.proxy.type": 0}) as ff:
        state, text = ff.load(url)
        assert state == "ok", text
        c = ff.client
        assert c.title == "tokentrust fleet report"
        rows = c.execute_script(rows_js)
        assert [(r[0], r[1]) for r in rows] == [("lab-ws-02", "failed"), ("lab-ws-03", "warning"),
                                                ("lab-ws-01", "ok")]
        assert "lacks CA Lab Advanced CA V3" in rows[0][2] and "test login failed: wrong PIN" in rows[0][2]
        assert "module gem not registered" in rows[0][2]
        assert "1 of 3 hosts need action, 1 need attention." in c.execute_script(
            "return document.getElementById('headline').innerText")
        assert c.execute_script("return document.getElementById('card-failed').innerText").startswith("1")
        # nothing loaded from anywhere but the file itself
        assert c.execute_script("return performance.getEntriesByType('resource').length") == 0
        assert c.execute_script("return document.querySelectorAll('#timeline rect.bar').length") == 6

        host_th = c.find_element(By.CSS_SELECTOR, "#hosts thead th:nth-child(1)")
        host_th.click()
        assert [r[0] for r in c.execute_script(rows_js)] == ["lab-ws-01", "lab-ws-02", "lab-ws-03"]
        assert host_th.get_attribute("aria-sort") == "ascending"
        host_th.click()
        assert [r[0] for r in c.execute_script(rows_js)] == ["lab-ws-03", "lab-ws-02", "lab-ws-01"]
        c.find_element(By.CSS_SELECTOR, "#hosts thead th:nth-child(2)").click()  # status, worst first
        assert [r[1] for r in c.execute_script(rows_js)] == ["failed", "warning", "ok"]


def test_page_has_no_network_reference(reported):
    page = (reported["reports"] / "fleet.html").read_text()
    assert re.findall(r"\w+://[^\s\"'<]*", page) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only
    assert len(re.findall(r"<script\b", page)) == 1 and not re.search(r"<(link|img|iframe|object)\b", page)
