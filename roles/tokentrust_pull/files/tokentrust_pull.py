# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tokentrust pull mode: this workstation converges itself (installed by role tokentrust_pull).

    tokentrust-pull [--background] [--force] [--reason WHY]

Reads /etc/tokentrust/pull.json; fetches the signed manifest (URL + ".manifest") that playbooks/pull_publish.yml
wrote, verifies its Ed25519 signature with a public key pinned in that configuration (public_keys) BEFORE anything
else, refuses a version lower than the last one accepted (a replay of older signed content), then fetches the
content tarball (exactly the size the manifest says, into a file, never into memory) and unpacks it only when its
SHA-256 is the one the manifest signed. The transport is not trusted: http:// is fine because the signature is
checked; https:// verifies the server too (cafile when given). The fetch has an overall deadline (fetch_seconds) and
the whole run another (deadline_seconds): the process ends, and its lock with it, by then. Every refusal is written
to <dir>/result.json (result "refused", the reason in "error"), which playbooks/report.yml reads on its next run.
Runs the content's site.yml on this machine (connection local, the workstation's /usr/bin/python3 for the modules)
with the pinned ansible-core of the role's venv; this agent runs in that venv too (its `cryptography` verifies).
One run at a time (flock); a hook (network up, boot) starts no run when one converged less than
min_interval_minutes ago (--force does).

It runs on the workstation alone, before any content is trusted, so it cannot import the project's module_utils
(they arrive inside the content it is checking): its one atomic write (atomic_write) is kept here, minimal.
"""
import argparse
import base64
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request

CONFIG = "/etc/tokentrust/pull.json"
FORMAT = "tokentrust-pull/1"
SIGNED_FORMAT = "tokentrust-pull-signed/1"
PAYLOAD_FORMAT = "tokentrust-pull-content/1"
ACCEPTED = "accepted.json"
MANIFEST_MAX = 64 * 1024
CHUNK = 64 * 1024


class Refused(Exception):
    """The content is not run: the message says why (written to result.json as result "refused")."""


class FetchFailed(Exception):
    """The server could not be reached or did not answer in time: the next hook or timer run tries again."""


class Deadline(Exception):
    pass


def stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write(path, text, mode=0o644):
    """Temp file (O_EXCL, in the same root-owned directory), fsync, rename over `path`: old or new, never partial."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _alarm(signum, frame):
    raise Deadline()


class deadline:
    """Raise Deadline in this thread when `seconds` have passed (SIGALRM): covers DNS, connect, TLS, headers, body."""

    def __init__(self, seconds):
        self.seconds = max(0.01, seconds)

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)
        return False


def _opener(cfg):
    ctx = ssl.create_default_context(cafile=cfg.get("cafile") or None)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))


def fetch_to(cfg, url, out, limit, exact=None):
    """Stream `url` into the file object `out`: at most `limit` bytes (exactly `exact` when given), else Refused."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise Refused("%s: only http:// and https:// URLs are fetched (the signature, not the transport, is the "
                      "trust)" % url)
    try:
        with _opener(cfg).open(url, timeout=cfg.get("timeout", 60)) as r:  # nosec: root's URL; content is verified
            declared = r.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise Refused("%s announces %s bytes, more than the %d %s; nothing was read or run"
                              % (url, declared, limit, "allowed" if exact is None else "the signed manifest says"))
            n = 0
            while True:
                chunk = r.read1(CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                if n > limit:
                    raise Refused("%s sent more than %d bytes (%s); stopped reading, nothing was run"
                                  % (url, limit, "the limit" if exact is None else "what the signed manifest says"))
                out.write(chunk)
    except (Refused, Deadline):
        raise
    except (OSError, ValueError) as exc:
        raise FetchFailed("cannot fetch %s: %s" % (url, exc)) from exc
    if exact is not None and n != exact:
        raise Refused("%s is %d bytes, the signed manifest says %d; nothing was run" % (url, n, exact))
    return n


def load_keys(cfg):
    keys = []
    for k in cfg.get("public_keys") or []:
        try:
            raw = base64.b64decode(k, validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise Refused("public key %r in the configuration is not a base64 Ed25519 key (32 bytes); rerun "
                          "playbooks/pull_agent.yml" % (k,))
        keys.append(raw)
    if not keys:
        raise Refused("no public key is pinned (public_keys in the configuration): nothing is run unsigned; rerun "
                      "playbooks/pull_agent.yml")
    return keys


def verify_manifest(cfg, data):
    """The payload of the signed manifest `data`, verified with a pinned key; Refused otherwise."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as exc:
        raise Refused("cannot verify signatures (no cryptography in %s: %s); rerun playbooks/pull_agent.yml"
                      % (sys.executable, exc)) from exc
    try:
        env = json.loads(data)
        if env.get("format") != SIGNED_FORMAT:
            raise ValueError("format %r, not %s" % (env.get("format"), SIGNED_FORMAT))
        body = base64.b64decode(env["payload"], validate=True)
        sig = base64.b64decode(env["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Refused("the manifest is not a signed tokentrust manifest (%s); nothing was run" % exc) from exc
    for raw in load_keys(cfg):
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, body)
            break
        except InvalidSignature:
            continue
    else:
        raise Refused("bad signature: the manifest (key id %s) is not signed by a pinned key (%s); forged or signed "
                      "with a key that was rotated out; nothing was unpacked or run"
                      % (str(env.get("key_id"))[:32],
                         ", ".join(hashlib.sha256(k).hexdigest()[:16] for k in load_keys(cfg))))
    try:
        payload = json.loads(body)
        if payload.get("format") != PAYLOAD_FORMAT:
            raise ValueError("format %r" % payload.get("format"))
        ok = (isinstance(payload.get("version"), int) and isinstance(payload.get("size"), int)
              and re.fullmatch(r"[0-9a-f]{64}", str(payload.get("sha256"))))
        if not ok:
            raise ValueError("version, size or sha256 missing")
    except (ValueError, AttributeError) as exc:
        raise Refused("the signed manifest is not a content manifest (%s); nothing was run" % exc) from exc
    return payload


def check_version(d, payload):
    """Refuse content older than the last accepted (or the same version with other bytes)."""
    try:
        with open(os.path.join(d, ACCEPTED), encoding="utf-8") as f:
            last = json.load(f)
        last_v, last_sha = int(last["version"]), last.get("sha256")
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Refused("%s is unreadable (%s): remove it only if you know why; nothing was run"
                      % (os.path.join(d, ACCEPTED), exc)) from exc
    if payload["version"] < last_v:
        raise Refused("replayed older content: version %d is lower than version %d accepted before; nothing was run"
                      % (payload["version"], last_v))
    if payload["version"] == last_v and payload["sha256"] != last_sha:
        raise Refused("version %d was accepted before with other content (sha256 %s, now %s); nothing was run"
                      % (last_v, last_sha, payload["sha256"]))


def safe_extract(path, dest):
    """Regular files and directories only, every path inside dest (no absolute path, no .., no link)."""
    with tarfile.open(path, mode="r:gz") as tar:
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


def obtain(cfg, d, res):
    """Fetch, verify and unpack the content into <d>/content; returns the payload. Refused/FetchFailed otherwise."""
    url = cfg["url"]
    limit = int(cfg.get("max_bytes", 512 * 1024 * 1024))
    with tempfile.TemporaryFile(dir=d) as mf:
        fetch_to(cfg, url + ".manifest", mf, MANIFEST_MAX)
        mf.seek(0)
        payload = verify_manifest(cfg, mf.read())
    res.update(version=payload["version"], content_sha256=payload["sha256"])
    check_version(d, payload)
    if payload["size"] > limit:
        raise Refused("the signed content is %d bytes, more than max_bytes %d; nothing was fetched"
                      % (payload["size"], limit))
    with tempfile.NamedTemporaryFile(dir=d, prefix=".download-") as tf:
        fetch_to(cfg, url, tf, payload["size"], exact=payload["size"])
        tf.flush()
        tf.seek(0)
        h = hashlib.sha256()
        for chunk in iter(lambda: tf.read(CHUNK), b""):
            h.update(chunk)
        if h.hexdigest() != payload["sha256"]:
            raise Refused("content checksum mismatch: %s has sha256 %s, the signed manifest says %s; nothing was "
                          "unpacked or run" % (url, h.hexdigest(), payload["sha256"]))
        atomic_write(os.path.join(d, ACCEPTED), json.dumps({"version": payload["version"],
                                                            "sha256": payload["sha256"], "accepted": stamp()}) + "\n")
        new, cur = os.path.join(d, "content.new"), os.path.join(d, "content")
        shutil.rmtree(new, ignore_errors=True)
        os.makedirs(new, mode=0o755)
        try:
            safe_extract(tf.name, new)
        except (ValueError, tarfile.TarError, OSError) as exc:
            shutil.rmtree(new, ignore_errors=True)
            raise Refused("bad content tarball: %s" % exc) from exc
    shutil.rmtree(cur, ignore_errors=True)
    os.replace(new, cur)
    return payload


def recap(text, host):
    m = re.search(r"^%s\s+:\s+(ok=.*)$" % re.escape(host), text, re.M)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))} if m else {}


def run(cfg, reason, until):
    d = cfg["dir"]
    started = stamp()
    res = {"format": FORMAT, "host": cfg["name"], "reason": reason, "started": started, "url": cfg["url"]}
    try:
        with deadline(min(until - time.monotonic(), float(cfg.get("fetch_seconds", 600)))):
            obtain(cfg, d, res)
    except Refused as exc:
        return dict(res, result="refused", finished=stamp(), error=str(exc))
    except FetchFailed as exc:
        return dict(res, result="fetch failed", finished=stamp(),
                    error="%s; the next hook or timer run tries again" % exc)
    except Deadline:
        return dict(res, result="refused", finished=stamp(),
                    error="the fetch did not finish within %s s (fetch_seconds; a slow or trickling server); nothing "
                          "was run" % cfg.get("fetch_seconds", 600))
    cur = os.path.join(d, "content")
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
    timed_out = False
    with open(log, "w", encoding="utf-8") as out:
        p = subprocess.Popen(cmd, cwd=cur, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            p.wait(timeout=max(1.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    rc = recap(text, cfg["name"])
    ok = p.returncode == 0 and rc and not rc.get("failed") and not rc.get("unreachable") and not timed_out
    if timed_out:
        text += "\ntokentrust-pull: stopped at the deadline (deadline_seconds %s)\n" % cfg.get("deadline_seconds")
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
    until = time.monotonic()
    with open(args.config, encoding="utf-8") as f:
        cfg = json.load(f)
    until += float(cfg.get("deadline_seconds", 3600))
    d = cfg["dir"]
    os.makedirs(d, mode=0o755, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        print("tokentrust-pull: %s must be a directory owned by uid %d and writable by nobody else (uid %d, mode "
              "%04o); nothing was run" % (d, os.geteuid(), st.st_uid, stat.S_IMODE(st.st_mode)))
        return 2
    if args.background:
        if os.fork():
            return 0
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    lock = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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
    res = run(cfg, args.reason, until)
    atomic_write(result_path, json.dumps(res, indent=1, sort_keys=True) + "\n")
    print("tokentrust-pull: %s" % res["result"])
    return 0 if res["result"] == "converged" else 1


if __name__ == "__main__":
    sys.exit(main())
