"""The lab builder: N Linux workstations on this machine, the stand-in PKI, token and test page.

    python -m lab.build create [--hosts 5] [--profiles 1] [--dir lab/run] [--inventory inventories/lab]
    python -m lab.build destroy [--dir lab/run] [--inventory inventories/lab]
    python -m lab.build status [--dir lab/run]

`create` writes, under the (git-ignored) lab folder:

    pki/                 the CertEurope stand-in chain (root, "Advanced CA V3", "Classe 3 Plus"),
                         the test page's TLS CA and server certificate; keys in pki/private/ (0600)
    token/               the SoftHSM2 token "CERTEUROPE LAB" behind pin_guard (see lab/token.py)
    testpage/            the test page daemon: pid, state (port, url), JSON-lines request log
    homes/home-NN/       one home per workstation, with Firefox ESR profiles made by Firefox itself
                         (kinds in turn: ~/.mozilla/firefox, ~/.config/mozilla/firefox, snap, flatpak)
    lab.json             the manifest: every path, pin, port and fingerprint (tests and the demo read it)

and the Ansible inventory `inventories/lab/` (hosts.yml, group_vars/all/main.yml, and the lab-only
PIN/PUK in group_vars/all/lab_only_secrets.yml). A second `create` reuses what exists (fast);
`destroy` stops the test page and removes everything `create` made.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lab import testpage as tp
from lab import token as labtoken
from lab.pki import Issued, certeurope_standin, make_ca

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "lab" / "run"
DEFAULT_INVENTORY = ROOT / "inventories" / "lab"
MANIFEST = "lab.json"
HOME_MARKER = ".tokentrust-lab-home.json"
FIREFOX = os.environ.get("TOKENTRUST_FIREFOX", "firefox-esr")
KINDS = ("mozilla", "xdg", "snap", "flatpak")
CLIENT_CAS = ("Lab Root CA 2", "Lab Advanced CA V3", "Lab Root CA", "Lab Classe 3 Plus V2")
TLS_CA = "Lab TLS CA"
LAB_VERSION = 1


class LabError(RuntimeError):
    """The lab could not be built or removed; the message says what and where."""


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _colon(hexstr: str) -> str:
    return ":".join(hexstr[i:i + 2] for i in range(0, len(hexstr), 2))


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def _yaml_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid YAML double-quoted scalar


# ---------------------------------------------------------------------------------------------
# PKI


def _save_issued(d: Path, issued: Issued) -> dict:
    slug = _slug(issued.name)
    cert_path = d / f"{slug}.pem"
    key_path = d / "private" / f"{slug}.key"
    key_path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(key_path.parent, 0o700)
    cert_path.write_bytes(issued.pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(issued.key_pem)
    c = issued.cert
    return {
        "name": issued.name, "path": str(cert_path), "key": str(key_path),
        "subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
        "serial": format(c.serial_number, "X"), "not_after": c.not_valid_after_utc.isoformat(),
        "sha256": issued.sha256_colon, "sha1": issued.sha1,
    }


def _load_issued(entry: dict) -> Issued:
    cert = x509.load_pem_x509_certificate(Path(entry["path"]).read_bytes())
    key = serialization.load_pem_private_key(Path(entry["key"]).read_bytes(), password=None)
    return Issued(cert=cert, key=key, name=entry["name"])


def _pki_ok(pki: Optional[dict]) -> bool:
    if not pki:
        return False
    for e in list(pki.get("cas", [])) + [pki.get("testpage_server") or {}]:
        if not (e.get("path") and Path(e["path"]).exists() and Path(e["key"]).exists()):
            return False
    return {e["name"] for e in pki["cas"]} == set(CLIENT_CAS) | {TLS_CA}


def build_pki(d: Path) -> dict:
    """A new stand-in chain + TLS CA + test page server certificate, saved as PEM under `d`."""
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    chain = certeurope_standin()
    tls_ca = make_ca(TLS_CA, org="tokentrust lab (test page)")
    cas = [_save_issued(d, chain[n]) for n in CLIENT_CAS] + [_save_issued(d, tls_ca)]
    ident = tp.make_server_identity(d / "testpage", tls_ca=tls_ca)
    server = {
        "name": "test page server", "path": str(ident["cert"]), "key": str(ident["key"]),
        "sha256": ident["leaf"].sha256_colon, "not_after": ident["leaf"].cert.not_valid_after_utc.isoformat(),
    }
    (d / "testpage" / "tls-ca.pem").unlink()  # the TLS CA is saved once, with the others
    return {"dir": str(d), "cas": cas, "testpage_server": server}


# ---------------------------------------------------------------------------------------------
# Firefox homes


def _firefox_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "MOZ_", "SNAP", "FLATPAK"))}
    env.update(HOME=str(home), MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1",
               MOZ_DISABLE_NONLOCAL_CONNECTIONS="1")  # the lab never reaches the internet
    env.pop("DISPLAY", None)
    return env


def _kind_layout(home: Path, kind: str) -> tuple:
    """(HOME to give Firefox, its profiles root) for a kind of install, as the profile finder expects."""
    if kind == "mozilla":
        return home, home / ".mozilla" / "firefox"
    if kind == "xdg":
        return home, home / ".config" / "mozilla" / "firefox"
    if kind == "snap":
        h = home / "snap" / "firefox" / "common"
        return h, h / ".mozilla" / "firefox"
    if kind == "flatpak":
        h = home / ".var" / "app" / "org.mozilla.firefox"
        return h, h / ".mozilla" / "firefox"
    raise LabError(f"unknown profile kind {kind!r} (one of {', '.join(KINDS)})")


def _firefox(args: Sequence[str], home: Path, what: str, timeout: float = 90) -> None:
    exe = shutil.which(FIREFOX)
    if not exe:
        raise LabError(f"{FIREFOX} is not installed (apt-get install firefox-esr): needed to make the profiles")
    try:
        proc = subprocess.run([exe, "--headless", "--no-remote", *args], env=_firefox_env(home),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{what}: Firefox did not finish within {timeout}s") from e
    if proc.returncode != 0:
        raise LabError(f"{what}: Firefox exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")


def _clear_stale_lock(profile: Path) -> None:
    """Firefox's screenshot mode exits without removing its `lock` symlink; drop it when its pid is gone."""
    lock = profile / "lock"
    if not lock.is_symlink():
        return
    target = os.readlink(lock)
    try:
        pid = int(target.rsplit("+", 1)[1])
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        lock.unlink()
    except PermissionError:
        pass


def _start_once(home: Path, profile: Optional[Path], shot: Path, what: str) -> None:
    args = ["--profile", str(profile)] if profile else []
    _firefox([*args, "--screenshot", str(shot), "about:blank"], home, what)
    shot.unlink(missing_ok=True)


def _parse_profiles_ini(root: Path) -> list:
    import configparser

    cp = configparser.RawConfigParser()
    cp.optionxform = str
    cp.read(root / "profiles.ini")
    out = []
    for sec in cp.sections():
        if not sec.startswith("Profile"):
            continue
        rel = cp.get(sec, "IsRelative", fallback="1") == "1"
        path = Path(cp.get(sec, "Path"))
        out.append({"name": cp.get(sec, "Name"), "path": str(root / path if rel else path), "relative": rel})
    return out


def make_home(home: Path, kind: str, profiles: int = 1) -> dict:
    """A workstation home whose Firefox profiles are made by Firefox ESR itself.

    The first headless start makes what a user's first start makes (profiles.ini, installs.ini,
    the install's `default-esr` profile with cert9.db/key4.db/pkcs11.txt, and the empty legacy
    `default` profile); each further profile is made with -CreateProfile (alternately relative
    and absolute path) and started once so that its databases exist.
    """
    if home.exists():
        shutil.rmtree(home)
    ff_home, root = _kind_layout(home, kind)
    if kind != "xdg":
        root.mkdir(parents=True)  # an existing root is where Firefox puts its profiles
    else:
        ff_home.mkdir(parents=True)  # a fresh home: Firefox 147+ picks ~/.config/mozilla/firefox itself
    shot = home / ".lab-shot.png"
    _start_once(ff_home, None, shot, f"first start of Firefox in {home}")
    for i in range(2, profiles + 1):
        name = f"work{i}"
        spec = name if i % 2 == 0 else f"{name} {home / 'profiles' / name}"
        _firefox(["-CreateProfile", spec], ff_home, f"creating profile {name} in {home}")
        made = {p["name"]: p for p in _parse_profiles_ini(root)}
        if name not in made:
            raise LabError(f"Firefox did not register profile {name} in {root / 'profiles.ini'}")
        _start_once(ff_home, Path(made[name]["path"]), shot, f"first start of profile {name} in {home}")
    found = _parse_profiles_ini(root)
    for p in found:
        pdir = Path(p["path"])
        _clear_stale_lock(pdir)
        p["databases"] = all((pdir / f).exists() for f in ("cert9.db", "key4.db", "pkcs11.txt"))
    with_db = [p for p in found if p["databases"]]
    if len(with_db) != profiles:
        raise LabError(f"{home}: expected {profiles} Firefox profile(s) with databases, found {len(with_db)} "
                       f"in {root}: {[p['name'] for p in found]}")
    info = {"home": str(home), "kind": kind, "firefox_home": str(ff_home), "profiles_root": str(root),
            "profiles": found, "requested_profiles": profiles}
    _write_if_changed(home / HOME_MARKER, json.dumps(info, indent=2) + "\n")
    return info


def _home_ok(home: Path, kind: str, profiles: int) -> Optional[dict]:
    marker = home / HOME_MARKER
    if not marker.exists():
        return None
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return None
    if info.get("kind") != kind or info.get("requested_profiles") != profiles:
        return None
    for p in info["profiles"]:
        if p["databases"] and not (Path(p["path"]) / "cert9.db").exists():
            return None
    return info


# ---------------------------------------------------------------------------------------------
# the test page daemon


def _testpage_paths(d: Path) -> dict:
    return {"dir": d, "pidfile": d / "testpage.pid", "state": d / "testpage.json", "log": d / "requests.jsonl"}


def start_testpage(run: Path, pki: dict, port: Optional[int] = None) -> dict:
    """Start the test page daemon unless it already runs with the same certificates; return its state."""
    p = _testpage_paths(run / "testpage")
    p["dir"].mkdir(parents=True, exist_ok=True)
    server = pki["testpage_server"]
    client_cas = [e["path"] for e in pki["cas"] if e["name"] in CLIENT_CAS]
    args = ["--cert", server["path"], "--key", server["key"], "--log", str(p["log"])]
    for ca in client_cas:
        args += ["--client-ca", ca]
    pid = tp.running_pid(p["pidfile"])
    if pid and p["state"].exists():
        state = json.loads(p["state"].read_text())
        if state.get("args") == args and (port in (None, 0, state.get("port"))):
            return state
    if pid:
        tp.stop_daemon(p["pidfile"])
    previous = None
    if p["state"].exists():
        previous = json.loads(p["state"].read_text()).get("port")
    want = port if port else (previous if previous and tp.port_free("127.0.0.1", previous) else 0)
    state = tp.start_daemon([*args, "--port", str(want)], p["state"], p["pidfile"], p["dir"] / "testpage.out")
    state["args"] = args
    state.update(pidfile=str(p["pidfile"]), log=str(p["log"]), state_file=str(p["state"]))
    p["state"].write_text(json.dumps(state, indent=2) + "\n")
    return state


# ---------------------------------------------------------------------------------------------
# inventory


def write_inventory(inv: Path, manifest: dict, python: str) -> list:
    """hosts.yml + group_vars/all/{main,lab_only_secrets}.yml; returns the files that changed."""
    head = ("---\n"
            f"# Generated by `python -m lab.build create` (tokentrust lab) on this machine: do not edit.\n"
            f"# `python -m lab.build destroy` removes it. Manifest: {manifest['manifest']}\n")
    hosts = [head, "all:\n  children:\n    workstations:\n      hosts:\n"]
    for h in manifest["hosts"]:
        hosts.append(f"        {h['name']}:\n"
                     f"          tokentrust_home: {_yaml_str(h['home'])}\n"
                     f"          tokentrust_lab_profile_kind: {h['kind']}\n"
                     f"          ansible_connection: local\n"
                     f"          ansible_python_interpreter: {_yaml_str(python)}\n")
    tok, page = manifest["token"], manifest["testpage"]
    main = [head, "tokentrust_lab: true\n", f"tokentrust_lab_dir: {_yaml_str(manifest['dir'])}\n",
            "# The CA set: the CertEurope stand-ins (the test page accepts client certificates from these),\n"
            "# then the TLS CA of the lab test page (stands in for the public CA of the CA's real site).\n",
            "ca_certificates_list:\n"]
    for ca in manifest["pki"]["cas"]:
        main.append(f"  - name: {_yaml_str(ca['name'])}\n    path: {_yaml_str(ca['path'])}\n"
                    f"    sha256: {_yaml_str(ca['sha256'])}\n")
    main.append("tokentrust_lab_client_ca_names:\n")
    main += [f"  - {_yaml_str(n)}\n" for n in CLIENT_CAS]
    main += [
        f"tokentrust_lab_testpage_ca_name: {_yaml_str(TLS_CA)}\n",
        "# The USB key stand-in: SoftHSM2 behind pin_guard (lab/pin_guard), 3 PIN / 3 PUK tries.\n",
        f"tokentrust_token_module: {_yaml_str(tok['module'])}\n",
        f"tokentrust_token_label: {_yaml_str(tok['label'])}\n",
        f"tokentrust_token_holder: {_yaml_str(labtoken.HOLDER)}\n",
        "# The CA's test page stand-in (lab/testpage.py), on this machine only.\n",
        f"tokentrust_test_url: {_yaml_str(page['url'])}\n",
        f"tokentrust_lab_testpage_log: {_yaml_str(page['log'])}\n",
        "# The roles, pointed at the lab: nothing is written outside the lab folder (each workstation's\n"
        "# system paths live under hosts/<name>/), no system package is installed, the token's module is the\n"
        "# stand-in.\n",
        f"ca_certificates_dest: {_yaml_str(str(Path(manifest['dir']) / 'cache' / 'ca'))}\n",
        "firefox_nss_install_packages: false\n",
        "tokentrust_token_middleware_linux: false  # no pcscd/OpenSC install on this machine (the fleet does it)\n",
        "firefox_nss_module_library: \"{{ tokentrust_token_module }}\"\n",
        "firefox_nss_missing_library: fail\n",
        "firefox_policies_path: \"{{ tokentrust_lab_dir }}/hosts/{{ inventory_hostname }}/etc/firefox/policies/"
        "policies.json\"\n",
        "firefox_policies_ca_dir: \"{{ tokentrust_lab_dir }}/hosts/{{ inventory_hostname }}/share/tokentrust/ca\"\n",
        "firefox_policies_module_path: \"{{ tokentrust_token_module }}\"\n",
        "token_verify_module: \"{{ tokentrust_token_module }}\"\n",
        "token_verify_token_label: \"{{ tokentrust_token_label }}\"\n",
        "token_verify_url: \"{{ tokentrust_test_url }}\"\n",
        "token_verify_pin: \"{{ tokentrust_lab_token_pin }}\"\n",
    ]
    secrets = (
        "---\n"
        "# LAB ONLY - NOT A SECRET. The PIN and PUK of the SoftHSM2 stand-in token of the tokentrust lab.\n"
        "# Real keys: never write a PIN or PUK in an inventory; use ansible-vault or vars_prompt.\n"
        f"tokentrust_lab_token_pin: {_yaml_str(tok['lab_only_secrets']['pin'])}\n"
        f"tokentrust_lab_token_puk: {_yaml_str(tok['lab_only_secrets']['puk'])}\n"
    )
    changed = []
    for path, text, mode in (
        (inv / "hosts.yml", "".join(hosts), 0o644),
        (inv / "group_vars" / "all" / "main.yml", "".join(main), 0o644),
        (inv / "group_vars" / "all" / "lab_only_secrets.yml", secrets, 0o600),
    ):
        if _write_if_changed(path, text, mode):
            changed.append(str(path))
    return changed


INVENTORY_FILES = ("hosts.yml", "group_vars/all/main.yml", "group_vars/all/lab_only_secrets.yml")


# ---------------------------------------------------------------------------------------------
# create / destroy


def _load_manifest(run: Path) -> Optional[dict]:
    m = run / MANIFEST
    if not m.exists():
        return None
    try:
        return json.loads(m.read_text())
    except ValueError:
        return None


def create(run: Path = DEFAULT_DIR, *, hosts: int = 5, profiles: int = 1, inventory: Path = DEFAULT_INVENTORY,
           port: Optional[int] = None, python: Optional[str] = None, jobs: int = 2,
           log: Callable[[str], None] = lambda s: None) -> dict:
    """Build (or bring up to date) the lab; returns the manifest (also written to `run`/lab.json)."""
    t0 = time.monotonic()
    run = Path(run).resolve()
    inventory = Path(inventory).resolve()
    if hosts < 1 or profiles < 1:
        raise LabError("--hosts and --profiles must be at least 1")
    old = _load_manifest(run)
    if run.exists() and any(run.iterdir()) and old is None:
        raise LabError(f"{run} exists, is not empty and holds no {MANIFEST}: not a lab folder, refusing to use it")
    run.mkdir(parents=True, exist_ok=True)
    if python is None:
        venv_python = ROOT / ".venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else sys.executable
    actions = []
    old = old or {}
    inventory_preexisted = old.get("inventory_preexisted", inventory.exists())

    # 1. PKI
    pki = old.get("pki")
    fresh_pki = not _pki_ok(pki)
    if fresh_pki:
        log("lab: generating the stand-in PKI")
        pki = build_pki(run / "pki")
        actions.append("pki")

    # 2. token (rebuilt with a fresh PKI: its certificates come from that chain)
    tok_dir = run / "token"
    tok = None
    if not fresh_pki and (tok_dir / "token.json").exists():
        try:
            tok = labtoken.LabToken.load(tok_dir)
            labtoken.token_info(tok)  # still opens, label still there
        except (labtoken.LabTokenError, KeyError, ValueError):
            tok = None
    if tok is None:
        log("lab: creating the SoftHSM2 token behind pin_guard")
        if tok_dir.exists():
            shutil.rmtree(tok_dir)
        chain = {e["name"]: _load_issued(e) for e in pki["cas"]}
        tok = labtoken.create_token(tok_dir, pki=chain)
        actions.append("token")
    elif labtoken.refresh_module(tok):
        actions.append("pin_guard")

    # 3. test page
    page = start_testpage(run, pki, port)
    if not old.get("testpage") or old["testpage"].get("pid") != page.get("pid"):
        actions.append("testpage")
        log(f"lab: test page listening on {page['url']}")

    # 4. homes
    homes_dir = run / "homes"
    homes_dir.mkdir(exist_ok=True)
    plan = []
    for i in range(1, hosts + 1):
        home, kind = homes_dir / f"home-{i:02d}", KINDS[(i - 1) % len(KINDS)]
        plan.append((i, home, kind, _home_ok(home, kind, profiles)))
    todo = [(home, kind) for _, home, kind, info in plan if info is None]
    made = {}
    if todo:
        log(f"lab: Firefox ESR makes the profiles of {len(todo)} home(s), {jobs} at a time")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {home: pool.submit(make_home, home, kind, profiles) for home, kind in todo}
            for home, fut in futures.items():
                made[home] = fut.result()
                actions.append(home.name)
    host_entries = []
    for i, home, kind, info in plan:
        info = info or made[home]
        host_entries.append({"name": f"lab-ws-{i:02d}", "home": str(home), "kind": kind,
                             "profiles_root": info["profiles_root"], "profiles": info["profiles"]})
    for extra in sorted(homes_dir.glob("home-*")):
        if extra.name not in {f"home-{i:02d}" for i in range(1, hosts + 1)} and (extra / HOME_MARKER).exists():
            shutil.rmtree(extra)
            actions.append(f"removed {extra.name}")

    manifest = {
        "version": LAB_VERSION,
        "dir": str(run),
        "manifest": str(run / MANIFEST),
        "created": old.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inventory": str(inventory),
        "inventory_preexisted": inventory_preexisted,
        "inventory_files": [str(inventory / f) for f in INVENTORY_FILES],
        "python": python,
        "pki": pki,
        "token": tok.to_json(),
        "testpage": {k: page[k] for k in ("pid", "host", "port", "url", "log", "pidfile", "state_file")},
        "hosts": host_entries,
    }
    manifest["token"]["holder"] = labtoken.HOLDER
    changed = write_inventory(inventory, manifest, python)
    if changed:
        actions.append("inventory")
    old_cmp = {k: v for k, v in old.items() if k not in ("actions", "seconds")}
    if old_cmp != manifest:
        _write_if_changed(run / MANIFEST, json.dumps(manifest, indent=2) + "\n", 0o600)
    manifest["actions"] = actions
    manifest["seconds"] = round(time.monotonic() - t0, 2)
    return manifest


def destroy(run: Path = DEFAULT_DIR, *, inventory: Optional[Path] = None,
            log: Callable[[str], None] = lambda s: None) -> list:
    """Stop the test page, remove the lab folder and the inventory files the lab wrote. Returns what went."""
    run = Path(run).resolve()
    removed = []
    m = _load_manifest(run)
    if m is None:
        if run.exists() and any(run.iterdir()):
            raise LabError(f"{run} holds no {MANIFEST}: not a lab folder, refusing to remove it")
    pidfile = run / "testpage" / "testpage.pid"
    if tp.stop_daemon(pidfile):
        removed.append("testpage (stopped)")
        log("lab: test page stopped")
    inv = Path(inventory).resolve() if inventory else Path(m["inventory"]) if m else DEFAULT_INVENTORY
    for f in INVENTORY_FILES:
        p = inv / f
        if not p.exists():
            continue
        text = p.read_text()
        if text.startswith(("---\n# Generated by `python -m lab.build create`", "---\n# LAB ONLY")):
            p.unlink()
            removed.append(str(p))
    for d in (inv / "group_vars" / "all", inv / "group_vars", inv):
        if d == inv and m and m.get("inventory_preexisted"):
            break
        try:
            d.rmdir()
        except OSError:
            break
    if run.exists():
        shutil.rmtree(run)
        removed.append(str(run))
        log(f"lab: removed {run}")
    return removed


def status(run: Path = DEFAULT_DIR) -> dict:
    run = Path(run).resolve()
    m = _load_manifest(run)
    if m is None:
        return {"dir": str(run), "exists": False}
    pid = tp.running_pid(m["testpage"]["pidfile"])
    return {"dir": str(run), "exists": True, "hosts": len(m["hosts"]), "testpage_running": bool(pid),
            "url": m["testpage"]["url"], "token": m["token"]["label"], "module": m["token"]["module"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.build", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("create", "destroy", "status"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=str(DEFAULT_DIR), help="lab folder (default lab/run)")
        if name != "status":
            p.add_argument("--inventory", default=None, help="inventory folder (default inventories/lab)")
        if name == "create":
            p.add_argument("--hosts", type=int, default=5, help="workstations (default 5)")
            p.add_argument("--profiles", type=int, default=1,
                           help="Firefox profiles with databases per home (default 1)")
            p.add_argument("--port", type=int, default=None, help="test page port (default: previous, else free)")
            p.add_argument("--jobs", type=int, default=2, help="Firefox starts in parallel (default 2)")
            p.add_argument("--json", action="store_true", help="print the manifest")
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(msg, flush=True)

    try:
        if args.cmd == "create":
            m = create(Path(args.dir), hosts=args.hosts, profiles=args.profiles,
                       inventory=Path(args.inventory) if args.inventory else DEFAULT_INVENTORY,
                       port=args.port, jobs=args.jobs, log=say)
            if args.json:
                print(json.dumps(m, indent=2))
            else:
                print(f"lab ready in {m['seconds']}s ({', '.join(m['actions']) or 'nothing to do'}): "
                      f"{len(m['hosts'])} hosts, token {m['token']['label']!r}, test page {m['testpage']['url']}, "
                      f"inventory {m['inventory']}, manifest {m['manifest']}")
        elif args.cmd == "destroy":
            gone = destroy(Path(args.dir), inventory=Path(args.inventory) if args.inventory else None, log=say)
            print(f"lab destroyed ({len(gone)} items)" if gone else "no lab to destroy")
        else:
            print(json.dumps(status(Path(args.dir)), indent=2))
    except (LabError, labtoken.LabTokenError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
