# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Publish the content for pull mode (playbooks/pull_publish.yml runs this on the controller).

    publish.py --project DIR --dest DIR --key SIGNING_KEY --vars JSON [--wheels "ansible-core==X cryptography==Y"]

Writes into DEST, each file atomically and only when its content changed:
  tokentrust-content.tar.gz   the project's playbooks, roles, modules, module_utils, plugin_utils, plugins, ansible.cfg,
                              pull_vars.yml (the variables given) and the local CA files they name (pull/ca/)
  tokentrust-content.tar.gz.manifest
                              the signed manifest (pull_key.sign: Ed25519 with SIGNING_KEY, made by pull_key.py):
                              {"format", "file", "sha256", "size", "version"}; the version goes up by one each time
                              the content changes (the highest of the published manifest's and the counter kept
                              next to the key, SIGNING_KEY.version), so that a workstation refuses older content
  wheels/                     the pinned ansible-core, cryptography and their dependencies (pip download), when
                              --wheels is given and they are not there yet
Prints one JSON line: {"changed": bool, "sha256": ..., "files": n}.
"""
import argparse
import base64
import glob
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import pull_key
from cryptography.exceptions import InvalidSignature

PAYLOAD_FORMAT = "tokentrust-pull-content/1"
NAME = "tokentrust-content.tar.gz"
# everything ansible.cfg and the playbooks reach: plugin_utils/ is what the filter and callback plugins import
PARTS = ("ansible.cfg", "playbooks", "roles", "library", "module_utils", "plugin_utils", "filter_plugins",
         "callback_plugins", "doc_fragments")


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, 0, 0, 0
    tar.addfile(info, io.BytesIO(data))


def content(project, variables):
    files = []
    for part in PARTS:
        top = os.path.join(project, part)
        if os.path.isfile(top):
            files.append(part)
        for root, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [os.path.relpath(os.path.join(root, n), project) for n in names if not n.endswith(".pyc")]
    variables = dict(variables)
    cas, extra = [], {}
    for ca in variables.get("ca_certificates_list") or []:
        ca = dict(ca)
        if ca.get("path"):
            with open(os.path.expanduser(ca["path"]), "rb") as f:
                data = f.read()
            name = "pull/ca/%s" % os.path.basename(ca["path"])
            extra[name] = data
            ca["path"] = "{{ playbook_dir }}/../" + name
        cas.append(ca)
    if cas:
        variables["ca_certificates_list"] = cas
    extra["pull_vars.yml"] = (json.dumps(variables, indent=1, sort_keys=True) + "\n").encode()
    buf = io.BytesIO()
    # deterministic: same input, same bytes (no time stamps in the gzip header or the members)
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for rel in sorted(set(files)):
            st = os.stat(os.path.join(project, rel))
            with open(os.path.join(project, rel), "rb") as f:
                add_bytes(tar, rel, f.read(), 0o755 if st.st_mode & 0o111 else 0o644)
        for name in sorted(extra):
            add_bytes(tar, name, extra[name])
    return buf.getvalue(), len(files) + len(extra)


def write_if_changed(path, data, mode=0o644):
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def published_manifest(path, priv):
    """(payload of the manifest at `path` if it is ours and signed by this key or None, its version or 0)."""
    try:
        with open(path, "rb") as f:
            env = json.loads(f.read(65536))
        payload = json.loads(base64.b64decode(env["payload"]))
        version = int(payload.get("version", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, 0
    try:
        priv.public_key().verify(base64.b64decode(env["signature"]), base64.b64decode(env["payload"]))
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return None, version
    return payload, version


def read_counter(path):
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        raise SystemExit("the version counter %s is not a number (%s): fix or remove it" % (path, exc)) from exc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", required=True)
    ap.add_argument("--dest", required=True)
    ap.add_argument("--key", required=True, help="the Ed25519 signing key (pull_key.py makes it)")
    ap.add_argument("--vars", default="{}")
    ap.add_argument("--wheels", default="")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.dest, mode=0o755, exist_ok=True)
    key = os.path.expanduser(a.key)
    if a.check and not os.path.lexists(key):
        print(json.dumps({"changed": True, "sha256": None, "files": None, "version": None}))
        return 0  # check mode: the key would be made first, then the content signed
    try:
        priv = pull_key.load_private(key)
    except (pull_key.KeyError_, OSError) as exc:
        sys.stderr.write("cannot sign the pull content: %s (playbooks/pull_agent.yml makes the key)\n" % exc)
        return 2
    blob, n = content(a.project, json.loads(a.vars))
    sha = hashlib.sha256(blob).hexdigest()
    tar = os.path.join(a.dest, NAME)
    manifest = tar + ".manifest"
    counter = key + ".version"
    old, old_version = published_manifest(manifest, priv)
    try:
        with open(tar, "rb") as f:
            same_tar = f.read() == blob
    except FileNotFoundError:
        same_tar = False
    fresh = old is not None and old.get("sha256") == sha and old.get("size") == len(blob) and same_tar
    version = old["version"] if fresh else max(old_version, read_counter(counter)) + 1
    changed = not fresh
    if changed and not a.check:
        # the counter first: a publish killed after it skips a number, never reuses one
        write_if_changed(counter, ("%d\n" % version).encode(), mode=0o600)
        write_if_changed(tar, blob)
        write_if_changed(manifest, pull_key.sign(priv, {"format": PAYLOAD_FORMAT, "file": NAME, "sha256": sha,
                                                        "size": len(blob), "version": version}))
        try:
            os.unlink(tar + ".sha256")  # the unsigned checksum of earlier releases: nothing reads it any more
        except FileNotFoundError:
            pass
    pins = a.wheels.split()
    wheels = os.path.join(a.dest, "wheels")
    have = {os.path.basename(p).split("-")[0].lower().replace("_", "-") + "==" + os.path.basename(p).split("-")[1]
            for p in glob.glob(os.path.join(wheels, "*.whl"))}
    if pins and not set(p.lower() for p in pins) <= have and not a.check:
        p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                            "--only-binary=:all:", "-d", wheels, *pins], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            sys.stderr.write("pip download %s failed: %s\n" % (" ".join(pins), p.stderr[-1500:]))
            return 2
        changed = True
    print(json.dumps({"changed": changed, "sha256": sha, "files": n, "version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
