#!/usr/bin/env python3
"""`make demo` (the fleet) and `make demo-local` (the folder lab): the main job, readable progress, one-screen summary.

DEMO_MODE=fleet (make demo): N workstation containers (lab/fleet.py), Debian 12 and Debian 13 alternating, reached
over SSH with become on 127.0.0.1 ports, system Python, real users whose profiles Firefox made; each one's key is its
virtual PIV card (lab/piv_card.py) in a vpcd reader under the real pcscd, which site.yml installs with OpenSC from
the distribution (role token_middleware_linux) and registers (the library resolved on each host); the inventory is a
copy of inventories/example (inventories/fleet/), the lab's stand-ins come with -e @lab_vars.yml (--key card).
DEMO_MODE=local (make demo-local): the folder lab (lab/build.py), homes on this machine, connection local: fast,
no Docker.

1. the lab: workstations with real Firefox ESR profiles, the CertEurope stand-in CA chain, the token(s), the local
   HTTPS test page, the inventory
2. playbooks/site.yml against the lab (CA set proven first, then policies and every profile)
3. playbooks/verify.yml: the test login with the key (fleet: the card through pcscd and OpenSC; local: the SoftHSM2
   token), TLS client authentication to the test page
4. playbooks/report.yml: reports/fleet.html and reports/fleet.json
Writes only under lab/fleet/ or lab/run/ (the lab) and reports/. DEMO_HOSTS=N sets the number of workstations
(default 5: 3 Debian 12 + 2 Debian 13); DEMO_SUITES=bookworm,trixie the releases (fleet, hosts alternating);
DEMO_DIR=<dir> puts the lab, its inventory and the reports under <dir> instead (the tests use it).
"""
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
DEMO_DIR = os.environ.get("DEMO_DIR")
FLEET = os.environ.get("DEMO_MODE", "fleet") == "fleet"
LAB_DIR = os.path.join(DEMO_DIR, "lab") if DEMO_DIR else os.path.join(ROOT, "lab", "fleet" if FLEET else "run")
INVENTORY = os.path.join(DEMO_DIR, "inventory") if DEMO_DIR else os.path.join(
    ROOT, "inventories", "fleet" if FLEET else "lab")
LAB_VARS = ["-e", "@" + os.path.join(LAB_DIR, "lab_vars.yml")] if FLEET else []
REPORTS = os.path.join(DEMO_DIR, "reports") if DEMO_DIR else os.path.join(ROOT, "reports")
SUITES = os.environ.get("DEMO_SUITES", "bookworm,trixie")  # the fleet's Debian releases, hosts alternating
OUT_VARS = ["-e", "fleet_report_dest=%s" % REPORTS, "-e", "token_verify_report_dir=%s" % os.path.join(REPORTS, "token")]
BOLD, GREEN, RED, AMBER, DIM, OFF = "\033[1m", "\033[32m", "\033[31m", "\033[33m", "\033[2m", "\033[0m"
if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
    BOLD = GREEN = RED = AMBER = DIM = OFF = ""


def step(n, title):
    print("\n%s[%d/4] %s%s" % (BOLD, n, title, OFF), flush=True)


def run(cmd, what):
    t = time.perf_counter()
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    log = os.path.join(LAB_DIR, "demo-%s.log" % what)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as f:
        f.write(p.stdout + p.stderr)
    recap = re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", p.stdout, re.M)
    hosts = [r for r in recap if r[0] != "localhost"]
    changed = sum(int(r[2]) for r in hosts)
    failed = sum(int(r[4]) + int(r[3]) for r in recap)
    if p.returncode != 0:
        print("  %sfailed%s after %.1f s (full log: %s)" % (RED, OFF, dt, os.path.relpath(log, ROOT)))
        tail = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()][-25:]
        print("\n".join("    " + ln for ln in tail))
        sys.exit(1)
    if recap:
        print("  done in %.1f s: %d host(s), %d change(s) on the hosts, %d failure(s)  %s(log: %s)%s"
              % (dt, len(hosts), changed, failed, DIM, os.path.relpath(log, ROOT), OFF))
    else:
        print("  done in %.1f s" % dt)
    return p, changed


def main():
    n = os.environ.get("DEMO_HOSTS", "5")
    t0 = time.perf_counter()
    if FLEET:
        step(1, "Fleet: %s workstation containers, Debian 12 and 13 alternating, over SSH (127.0.0.1), real users' "
                "Firefox profiles, a PIV card each in a reader under pcscd, test page" % n)
        p, _ = run([sys.executable, "-m", "lab.fleet", "create", "--hosts", n, "--dir", LAB_DIR,
                    "--inventory", INVENTORY, "--suites", SUITES, "--key", "card"], "lab")
    else:
        step(1, "Lab: %s workstations with real Firefox ESR profiles, stand-in CA chain, token, test page" % n)
        p, _ = run([sys.executable, "-m", "lab.build", "create", "--hosts", n, "--dir", LAB_DIR,
                    "--inventory", INVENTORY], "lab")
    print("  " + (p.stdout.strip().splitlines() or [""])[-1][:150])
    step(2, "site.yml: prove the CA set, %sthen policies and every profile of every workstation"
         % ("pcscd + OpenSC from the distribution (polkit rule on Debian 13), " if FLEET else ""))
    _, changed = run([os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, "playbooks/site.yml"] + LAB_VARS, "site")
    if changed == 0:
        print("  %sno change on the hosts: they were already provisioned (idempotent)%s" % (GREEN, OFF))
    step(3, "verify.yml: test login with the key %s(PIN, TLS client certificate, test page)"
         % ("on the card, through pcscd and OpenSC " if FLEET else "on the token "))
    playbook = [os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY]
    run(playbook + ["playbooks/verify.yml"] + LAB_VARS + OUT_VARS, "verify")
    step(4, "report.yml: the fleet report")
    run(playbook + ["playbooks/report.yml"] + LAB_VARS + OUT_VARS, "report")
    summary(time.perf_counter() - t0)


def summary(elapsed):
    path = os.path.join(REPORTS, "fleet.json")
    with open(path) as f:
        rep = json.load(f)
    hosts = rep.get("hosts", [])
    colour = {"ok": GREEN, "warning": AMBER, "failed": RED}
    sm = rep.get("summary", {})
    print("\n%sSummary%s (%.0f s)" % (BOLD, OFF, elapsed))
    print("  hosts %d: %s%d fine%s, %s%d need attention%s, %s%d need action%s; profiles %d/%d compliant; "
          "test login %d ok, %d failed, %d not run" % (
              sm.get("hosts", 0), GREEN, sm.get("ok", 0), OFF, AMBER, sm.get("warning", 0), OFF, RED,
              sm.get("failed", 0), OFF, sm.get("profiles_ok", 0), sm.get("profiles", 0), sm.get("token_ok", 0),
              sm.get("token_failed", 0), sm.get("token_not_run", 0)))
    releases = {}
    if FLEET:
        try:
            with open(os.path.join(LAB_DIR, "fleet.json")) as f:
                releases = {h["name"]: "Debian %s" % h.get("debian", "12") for h in json.load(f)["hosts"]}
        except (OSError, ValueError, KeyError):
            releases = {}
    for h in hosts:
        st = h.get("status", "?")
        counts = h.get("counts") or {}
        module = h.get("module") or {}
        token = h.get("token") or {}
        certs = token.get("certificates") or []
        expiry = min((c.get("days_left") for c in certs if c.get("days_left") is not None), default=None)
        login = token.get("status") or "not run"
        if token.get("holder"):
            login += " as %s" % token["holder"]
        if token.get("http_status"):
            login += " (HTTP %s)" % token["http_status"]
        print("  %s%-10s%s %s%-7s%s %sprofiles %d/%d, module %s %s, test login %s%s" % (
            BOLD, h.get("name", "?"), OFF, colour.get(st, ""), st, OFF,
            (releases[h.get("name")] + ", ") if h.get("name") in releases else "", counts.get("profiles_ok", 0),
            counts.get("profiles", 0), module.get("name", "gem"), "registered" if module.get("ok") else "MISSING",
            login, (", key expires in %d days" % expiry) if expiry is not None else ""))
        for r in h.get("reasons") or []:
            if r.get("level") in ("warning", "failed"):
                print("      %s- %s%s" % (colour.get(r["level"], ""), r.get("text"), OFF))
    cas = rep.get("ca_set") or []
    if cas:
        print("  CA set: %s" % "; ".join("%s (%s, %s days)" % (c.get("name"), c.get("role"), c.get("days_left"))
                                          for c in cas))
    print("\n  report: %s" % os.path.join(REPORTS, "fleet.html"))
    print("  json:   %s" % path)
    if not DEMO_DIR:
        print("  %sremove the lab with: make %s%s" % (DIM, "fleet-destroy" if FLEET else "lab-destroy", OFF))


if __name__ == "__main__":
    main()
