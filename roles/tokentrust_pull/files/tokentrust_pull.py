# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tokentrust pull mode: this workstation converges itself (installed by role tokentrust_pull).

    tokentrust-pull [--background] [--force] [--reason WHY]

Reads /etc/tokentrust/pull.json; fetches the content tarball published by playbooks/pull_publish.yml, checks it
against the .sha256 published next to it, unpacks it, and runs its site.yml on this machine (connection local,
the workstation's /usr/bin/python3 for the modules) with the pinned ansible-core of the role's venv. Writes
<dir>/result.json (atomically), which playbooks/report.yml reads on its next run. One run at a time (flock); a
hook (network up, boot) starts no run when one converged less than min_interval_minutes ago (--force does).
Standard library only.
"""
import argparse
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

CONFIG = "/etc/tokentrust/pull.json"
FORMAT = "tokentrust-pull/1"


def stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write(path, text):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def fetch(url, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # nosec: the URL is the role's, in root's config
        return r.read()


def safe_extract(blob, dest):
    """Regular files and directories only, every path inside dest (no absolute path, no .., no link)."""
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        with tarfile.open(fileobj=f, mode="r:gz") as tar:
            for m in tar.getmembers():
                norm = os.path.normpath(m.name)
                if norm.startswith(("/", "..")) or not (m.isfile() or m.isdir()):
                    raise ValueError("refusing tar member %r (only relative regular files and directories)" % m.name)
                target = os.path.join(dest, norm)
                if m.isdir():
                    os.makedirs(target, mode=0o755, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(target, 0o755 if m.mode & 0o111 else 0o644)


def recap(text, host):
    m = re.search(r"^%s\s+:\s+(ok=.*)$" % re.escape(host), text, re.M)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))} if m else {}


def run(cfg, reason):
    d = cfg["dir"]
    started = stamp()
    res = {"format": FORMAT, "host": cfg["name"], "reason": reason, "started": started, "url": cfg["url"]}
    try:
        blob = fetch(cfg["url"], cfg.get("timeout", 60))
        want = fetch(cfg["url"] + ".sha256", cfg.get("timeout", 60)).decode().split()[0].lower()
    except (OSError, ValueError, IndexError) as exc:
        return dict(res, result="fetch failed", finished=stamp(),
                    error="cannot fetch %s (or its .sha256): %s; the next hook or timer run tries again" % (
                        cfg["url"], exc))
    got = hashlib.sha256(blob).hexdigest()
    res["content_sha256"] = got
    if got != want:
        return dict(res, result="failed", finished=stamp(),
                    error="content checksum mismatch: %s has sha256 %s, its .sha256 says %s; nothing was run" % (
                        cfg["url"], got, want))
    new, cur = os.path.join(d, "content.new"), os.path.join(d, "content")
    shutil.rmtree(new, ignore_errors=True)
    os.makedirs(new, mode=0o755)
    try:
        safe_extract(blob, new)
    except (ValueError, tarfile.TarError, OSError) as exc:
        shutil.rmtree(new, ignore_errors=True)
        return dict(res, result="failed", finished=stamp(), error="bad content tarball: %s" % exc)
    shutil.rmtree(cur, ignore_errors=True)
    os.replace(new, cur)
    inv = os.path.join(d, "inventory.json")
    atomic_write(inv, json.dumps({"all": {"children": {"linux": {"hosts": {cfg["name"]: {
        "ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}}}}}}))
    cmd = [os.path.join(cfg["venv"], "bin", "ansible-playbook"), "-i", inv,
           os.path.join(cur, cfg.get("playbook", "playbooks/site.yml"))]
    if os.path.exists(os.path.join(cur, "pull_vars.yml")):
        cmd += ["-e", "@" + os.path.join(cur, "pull_vars.yml")]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(cur, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", TOKENTRUST_STATE_DIR=os.path.join(d, "state"), HOME="/root",
               PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    log = os.path.join(d, "last.log")
    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        p = subprocess.run(cmd, cwd=cur, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=cfg.get(
            "run_timeout", 3600), check=False)
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    rc = recap(text, cfg["name"])
    ok = p.returncode == 0 and rc and not rc.get("failed") and not rc.get("unreachable")
    try:
        core = subprocess.run([os.path.join(cfg["venv"], "bin", "python"), "-c",
                               "import ansible.release as r; print(r.__version__)"], capture_output=True, text=True,
                              timeout=60, check=False).stdout.strip()
    except OSError:
        core = None
    res.update(result="converged" if ok else "failed", finished=stamp(), rc=p.returncode, recap=rc,
               seconds=round(time.monotonic() - t0, 1), ansible_core=core, log=log,
               error=None if ok else text[-1500:])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--background", action="store_true", help="detach (for hooks that must not wait)")
    ap.add_argument("--force", action="store_true", help="run even if a run converged recently")
    ap.add_argument("--reason", default="manual")
    ap.add_argument("--config", default=CONFIG)
    args = ap.parse_args()
    with open(args.config, encoding="utf-8") as f:
        cfg = json.load(f)
    d = cfg["dir"]
    os.makedirs(d, mode=0o755, exist_ok=True)
    if args.background:
        if os.fork():
            return 0
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    lock = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("tokentrust-pull: a run is in progress")
        return 0
    result_path = os.path.join(d, "result.json")
    if not args.force and os.path.exists(result_path):
        try:
            with open(result_path, encoding="utf-8") as f:
                last = json.load(f)
            fin = datetime.datetime.strptime(last.get("finished", ""), "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc)
            age = (datetime.datetime.now(datetime.timezone.utc) - fin).total_seconds()
            if last.get("result") == "converged" and age < 60 * int(cfg.get("min_interval_minutes", 10)):
                print("tokentrust-pull: converged %d s ago; nothing to do (--force to run)" % age)
                return 0
        except (OSError, ValueError):
            pass
    res = run(cfg, args.reason)
    atomic_write(result_path, json.dumps(res, indent=1, sort_keys=True) + "\n")
    print("tokentrust-pull: %s" % res["result"])
    return 0 if res["result"] == "converged" else 1


if __name__ == "__main__":
    sys.exit(main())
