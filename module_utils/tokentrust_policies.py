# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Firefox enterprise policies (policies.json): build, load, validate and merge our fragment.

Pure Python (no Ansible import but our facts module): shared by `library/firefox_policies.py` (Linux/macOS) and the
Windows helper (same JSON format on Windows; GPO registry uses the same names).

What "we own" is exactly the desired fragment built by `desired_policies()`:

    {"Certificates": {"Install": [paths...], "ImportEnterpriseRoots": true},
     "SecurityDevices": {"Add": {"gem": "/usr/lib/pkcs11/libgclib.so"}}}

`merge_policies(doc, desired, "present")` adds these values to `doc["policies"]` without
touching other policies or other entries of the same lists/dicts; `"absent"` removes exactly
these values (and only them) and prunes containers that our removal left empty.

Firefox facts this follows (checked in Firefox ESR 153 Policies.sys.mjs / policies-schema.json):
- `SecurityDevices` accepts the new form `{"Add": {name: path}, "Delete": [names]}` and the
  deprecated flat form `{name: path}`. When `Add` or `Delete` is present, Firefox IGNORES the
  flat entries. So in a file that only uses the flat form we add our device in the flat form
  too (and warn), instead of adding an `Add` key that would silently disable the others.
- A device whose library path is already registered (under any name) is not added again by
  Firefox; we do not duplicate it either.
- `Certificates.ImportEnterpriseRoots` only has an effect on Windows and macOS.
"""
from __future__ import annotations

import copy
import json
import os.path

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_facts import (
    LINUX_INSTALL_DIRS,
    LINUX_SYSTEM_POLICIES,
    MACOS_APP,
    distribution_policies,
)

SECURITY_DEVICES_KEYWORDS = ("Add", "Delete")


class PolicyError(TokentrustError):
    """A policies document or input that cannot be used. `path` is set when it comes from a file."""

    def __init__(self, msg, path=None):
        self.msg = msg
        self.path = path
        super().__init__("policy", msg if path is None else f"{path}: {msg}", path=path)


class MergeResult:
    """Outcome of a merge: the new document plus what was added/removed/kept, and warnings."""

    def __init__(self, doc):
        self.doc = doc
        self.added = []
        self.removed = []
        self.unchanged = []
        self.warnings = []

    @property
    def changed(self):
        return bool(self.added or self.removed)

    def as_dict(self):
        return {
            "added": self.added,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "warnings": self.warnings,
        }


# ---------------------------------------------------------------------------------------------
# desired fragment
# ---------------------------------------------------------------------------------------------
def desired_policies(certificate_paths, devices, import_enterprise_roots=None):
    """The Firefox `policies` fragment we want.

    `certificate_paths`: list of file paths (Firefox also accepts bare file names looked up in
    its certificates/ directories); `devices`: {name: library path}; `import_enterprise_roots`:
    True/False where it applies (Windows/macOS), None to leave it out.
    """
    certificate_paths = list(certificate_paths or [])
    devices = dict(devices or {})
    for p in certificate_paths:
        if not isinstance(p, str) or not p.strip():
            raise PolicyError(f"certificate path {p!r} is not a non-empty string")
    for name, lib in devices.items():
        if not isinstance(name, str) or not name.strip():
            raise PolicyError(f"security device name {name!r} is not a non-empty string")
        if name in SECURITY_DEVICES_KEYWORDS:
            raise PolicyError(f"security device name {name!r} is reserved by Firefox (Add/Delete)")
        if not isinstance(lib, str) or not lib.strip():
            raise PolicyError(f"library path of security device {name!r} is not a non-empty string: {lib!r}")
    if import_enterprise_roots is not None and not isinstance(import_enterprise_roots, bool):
        raise PolicyError(f"import_enterprise_roots must be true, false or null, got {import_enterprise_roots!r}")

    out = {}
    certs = {}
    seen = []
    for p in certificate_paths:
        if p not in seen:
            seen.append(p)
    if seen:
        certs["Install"] = seen
    if import_enterprise_roots is not None:
        certs["ImportEnterpriseRoots"] = import_enterprise_roots
    if certs:
        out["Certificates"] = certs
    if devices:
        out["SecurityDevices"] = {"Add": devices}
    return out


def owned_entries(desired):
    """What "we added" is: the desired fragment itself, flattened into entries.

    Each entry: {"policy": ..., "key": ..., "value": ...} (for SecurityDevices the key is the
    device name). `state: absent` removes exactly these values and nothing else.
    """
    out = []
    certs = desired.get("Certificates", {})
    for p in certs.get("Install", []):
        out.append({"policy": "Certificates", "key": "Install", "value": p})
    if "ImportEnterpriseRoots" in certs:
        out.append({"policy": "Certificates", "key": "ImportEnterpriseRoots", "value": certs["ImportEnterpriseRoots"]})
    for name, lib in desired.get("SecurityDevices", {}).get("Add", {}).items():
        out.append({"policy": "SecurityDevices", "key": name, "value": lib})
    return out


# ---------------------------------------------------------------------------------------------
# load / validate / dump
# ---------------------------------------------------------------------------------------------
def load_policies(data, path=None):
    """Parse policies.json bytes/text into a document; raise PolicyError (with line/column) if malformed.

    An empty (or whitespace-only) file is an empty document: Firefox ignores it as well.
    """
    if isinstance(data, bytes):
        if data.startswith(b"\xef\xbb\xbf"):
            raise PolicyError("starts with a UTF-8 byte order mark; save it as UTF-8 without BOM", path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"is not valid UTF-8 (byte {e.start}: {e.reason})", path) from e
    else:
        text = data
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as e:
        line = getattr(e, "lineno", None)
        col = getattr(e, "colno", None)
        where = f" at line {line} column {col}" if line else ""
        raise PolicyError("is not valid JSON{}: {}".format(where, getattr(e, "msg", e)), path) from e
    validate_policies(doc, path)
    return doc


def validate_policies(doc, path=None):
    """Check the parts of the document we read or write; other policies are left to Firefox."""
    if not isinstance(doc, dict):
        raise PolicyError(f"top level must be a JSON object, found {_jtype(doc)}", path)
    if "policies" not in doc:
        return
    pol = doc["policies"]
    if not isinstance(pol, dict):
        raise PolicyError(f'"policies" must be an object, found {_jtype(pol)}', path)
    certs = pol.get("Certificates")
    if certs is not None:
        if not isinstance(certs, dict):
            raise PolicyError(f'"policies.Certificates" must be an object, found {_jtype(certs)}', path)
        inst = certs.get("Install")
        if inst is not None and (not isinstance(inst, list) or not all(isinstance(x, str) for x in inst)):
            raise PolicyError('"policies.Certificates.Install" must be a list of strings', path)
        ier = certs.get("ImportEnterpriseRoots")
        if ier is not None and not isinstance(ier, bool):
            raise PolicyError('"policies.Certificates.ImportEnterpriseRoots" must be true or false', path)
    sd = pol.get("SecurityDevices")
    if sd is not None:
        if not isinstance(sd, dict):
            raise PolicyError(f'"policies.SecurityDevices" must be an object, found {_jtype(sd)}', path)
        add = sd.get("Add")
        if add is not None and (not isinstance(add, dict) or not all(isinstance(v, str) for v in add.values())):
            raise PolicyError('"policies.SecurityDevices.Add" must be an object of name: library path strings', path)
        delete = sd.get("Delete")
        if delete is not None and (not isinstance(delete, list) or not all(isinstance(x, str) for x in delete)):
            raise PolicyError('"policies.SecurityDevices.Delete" must be a list of names', path)
        for k, v in sd.items():
            if k not in SECURITY_DEVICES_KEYWORDS and not isinstance(v, str):
                raise PolicyError(
                    f'"policies.SecurityDevices.{k}" (deprecated flat form) must be a library path string', path)


def dump_policies(doc):
    """Canonical text we write: UTF-8 JSON, 2-space indent, non-ASCII kept, trailing newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def flat_security_devices(doc):
    """The deprecated flat `SecurityDevices: {name: path}` entries of a document (name -> path)."""
    sd = doc.get("policies", {}).get("SecurityDevices", {})
    if not isinstance(sd, dict):
        return {}
    return {k: v for k, v in sd.items() if k not in SECURITY_DEVICES_KEYWORDS}


def _jtype(v):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


# ---------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------
def plan_merge(existing_doc, desired, state="present"):
    """Merge `desired` into a copy of `existing_doc`; return a MergeResult (never mutates the input)."""
    if state not in ("present", "absent"):
        raise PolicyError(f"state must be present or absent, got {state!r}")
    doc = copy.deepcopy(existing_doc) if existing_doc else {}
    validate_policies(doc)
    res = MergeResult(doc)
    if state == "present":
        _merge_present(doc, desired, res)
    else:
        _merge_absent(doc, desired, res)
    return res


def merge_policies(existing_doc, desired, state="present"):
    """The merged document (see `plan_merge` for what changed and the warnings)."""
    return plan_merge(existing_doc, desired, state).doc


def _entry(policy, key, value, note=None):
    e = {"policy": policy, "key": key, "value": value}
    if note:
        e["note"] = note
    return e


def _merge_present(doc, desired, res):
    want_certs = desired.get("Certificates", {})
    want_devices = desired.get("SecurityDevices", {}).get("Add", {})
    if not want_certs and not want_devices:
        return
    pol = doc.setdefault("policies", {})

    if want_certs:
        certs = pol.setdefault("Certificates", {})
        if "Install" in want_certs:
            inst = certs.setdefault("Install", [])
            for p in want_certs["Install"]:
                if p in inst:
                    res.unchanged.append(_entry("Certificates", "Install", p))
                else:
                    inst.append(p)
                    res.added.append(_entry("Certificates", "Install", p))
        if "ImportEnterpriseRoots" in want_certs:
            want = want_certs["ImportEnterpriseRoots"]
            have = certs.get("ImportEnterpriseRoots")
            if have is want:
                res.unchanged.append(_entry("Certificates", "ImportEnterpriseRoots", want))
            else:
                if have is not None:
                    res.removed.append(_entry("Certificates", "ImportEnterpriseRoots", have, "replaced"))
                certs["ImportEnterpriseRoots"] = want
                res.added.append(_entry("Certificates", "ImportEnterpriseRoots", want))

    if want_devices:
        sd = pol.setdefault("SecurityDevices", {})
        flat = {k: v for k, v in sd.items() if k not in SECURITY_DEVICES_KEYWORDS}
        add = sd.get("Add")
        new_form = add is not None or "Delete" in sd
        flat_names = ", ".join(sorted(flat))
        if flat and new_form:
            res.warnings.append(
                f"policies.SecurityDevices mixes the deprecated flat form ({flat_names}) with Add/Delete: Firefox "
                "ignores the flat entries; move them under SecurityDevices.Add")
        elif flat:
            res.warnings.append(
                f"policies.SecurityDevices uses the deprecated flat form ({flat_names}): kept as is, and our "
                "device(s) are added in the same form, because adding SecurityDevices.Add would make Firefox "
                "ignore them")
        for name, lib in want_devices.items():
            registered = dict(flat)
            registered.update(add or {})
            same_name = registered.get(name)
            other_names = sorted(n for n, v in registered.items() if v == lib and n != name)
            if same_name == lib:
                res.unchanged.append(_entry("SecurityDevices", name, lib))
                continue
            if same_name is None and other_names:
                others = ", ".join(other_names)
                res.unchanged.append(_entry("SecurityDevices", name, lib, f"library already registered as {others}"))
                res.warnings.append(
                    f"security device library {lib} is already registered as {others}: not added again as {name!r}")
                continue
            if name in (sd.get("Delete") or []):
                res.warnings.append(f"security device {name!r} is also listed in SecurityDevices.Delete: "
                                    "Firefox deletes it, then adds it again from Add")
            if flat and not new_form:
                target = sd
            else:
                target = add = sd.setdefault("Add", {})
                new_form = True
            if same_name is not None:
                res.removed.append(_entry("SecurityDevices", name, same_name, "replaced"))
            target[name] = lib
            if target is sd:
                flat[name] = lib
            res.added.append(_entry("SecurityDevices", name, lib))


def _merge_absent(doc, desired, res):
    pol = doc.get("policies")
    if not isinstance(pol, dict):
        return
    want_certs = desired.get("Certificates", {})
    certs = pol.get("Certificates")
    if want_certs and isinstance(certs, dict):
        inst = certs.get("Install")
        if isinstance(inst, list) and want_certs.get("Install"):
            before = len(inst)
            for p in want_certs["Install"]:
                while p in inst:
                    inst.remove(p)
                    res.removed.append(_entry("Certificates", "Install", p))
            if before and not inst:
                del certs["Install"]
        if "ImportEnterpriseRoots" in want_certs and "ImportEnterpriseRoots" in certs:
            if certs["ImportEnterpriseRoots"] is want_certs["ImportEnterpriseRoots"]:
                res.removed.append(_entry("Certificates", "ImportEnterpriseRoots", certs.pop("ImportEnterpriseRoots")))
            else:
                res.unchanged.append(_entry("Certificates", "ImportEnterpriseRoots", certs["ImportEnterpriseRoots"],
                                            "not ours (different value): kept"))
        if not certs and res.removed:
            del pol["Certificates"]

    want_devices = desired.get("SecurityDevices", {}).get("Add", {})
    sd = pol.get("SecurityDevices")
    if want_devices and isinstance(sd, dict):
        n_removed = len(res.removed)
        add = sd.get("Add")
        for name, lib in want_devices.items():
            if isinstance(add, dict) and add.get(name) == lib:
                del add[name]
                res.removed.append(_entry("SecurityDevices", name, lib))
            elif name not in SECURITY_DEVICES_KEYWORDS and sd.get(name) == lib:
                del sd[name]
                res.removed.append(_entry("SecurityDevices", name, lib, "deprecated flat form"))
            else:
                have = (add or {}).get(name, sd.get(name) if name not in SECURITY_DEVICES_KEYWORDS else None)
                if have is not None:
                    res.unchanged.append(_entry("SecurityDevices", name, have, "not ours (different library): kept"))
        if len(res.removed) > n_removed:
            if isinstance(add, dict) and not add:
                del sd["Add"]
            if not sd:
                del pol["SecurityDevices"]


# ---------------------------------------------------------------------------------------------
# where Firefox reads policies.json (the paths are facts: module_utils/tokentrust_facts.py)
# ---------------------------------------------------------------------------------------------
def default_policies_path(system="Linux", location="system", install_dir=None, exists=None):
    """The policies.json path for `system` (platform.system()) and `location` (system|distribution).

    `install_dir` overrides the Firefox install dir for `distribution`; otherwise the first of
    LINUX_INSTALL_DIRS that `exists`. Raises PolicyError when nothing fits.
    """
    exists = exists or os.path.isdir
    if location not in ("system", "distribution"):
        raise PolicyError(f"location must be system or distribution, got {location!r}")
    if system == "Darwin":
        return distribution_policies(install_dir or MACOS_APP, system)
    if system != "Linux":
        raise PolicyError(f"no default policies.json path for {system}: give path explicitly")
    if location == "system":
        return LINUX_SYSTEM_POLICIES
    if install_dir:
        return distribution_policies(install_dir)
    for d in LINUX_INSTALL_DIRS:
        if exists(d):
            return distribution_policies(d)
    looked = ", ".join(LINUX_INSTALL_DIRS)
    raise PolicyError(f"no Firefox install dir found (looked in {looked}): set install_dir or path")


# --------------------------------------------------------------------------------------------- certificate files
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


def _der_item(der, pos, what):
    """(tag, start of content, end) of the DER item at `pos`; PolicyError when it does not fit in `der`."""
    if pos + 2 > len(der):
        raise PolicyError(f"{what}: not a certificate (truncated DER)")
    tag, n = der[pos], der[pos + 1]
    if n < 0x80:
        start, length = pos + 2, n
    else:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + 2 + k > len(der):
            raise PolicyError(f"{what}: not a certificate (bad DER length)")
        start, length = pos + 2 + k, int.from_bytes(der[pos + 2:pos + 2 + k], "big")
    if start + length > len(der):
        raise PolicyError(f"{what}: not a certificate (truncated DER)")
    return tag, start, start + length


def certificate_pem(text, what, sha256=None):
    """Canonical PEM of the one X.509 certificate `text` holds, checked: exactly one PEM CERTIFICATE block and
    nothing else but whitespace, a DER Certificate (SEQUENCE of tbsCertificate SEQUENCE, algorithm SEQUENCE,
    signature BIT STRING, nothing after), and, when the CA set gives one, the SHA-256 fingerprint. What is written
    into a certificate file is re-encoded from that DER: no other text can reach the file (PolicyError
    otherwise). Returns (pem text, sha256 hex upper)."""
    import base64
    import binascii
    import hashlib

    if not isinstance(text, str):
        raise PolicyError(f"{what}: 'pem' must be PEM text, got {type(text).__name__}")
    body = text.strip()
    if not (body.startswith(_PEM_BEGIN) and body.endswith(_PEM_END)) or body.count(_PEM_BEGIN) != 1:
        raise PolicyError(f"{what}: 'pem' is not one PEM certificate (-----BEGIN CERTIFICATE----- ... "
                          "-----END CERTIFICATE----- and nothing else): nothing written")
    b64 = "".join(body[len(_PEM_BEGIN):-len(_PEM_END)].split())
    try:
        der = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError(f"{what}: 'pem' holds invalid base64: nothing written") from None
    tag, start, end = _der_item(der, 0, what)
    if tag != 0x30 or end != len(der):
        raise PolicyError(f"{what}: not a DER certificate (outer SEQUENCE, trailing data): nothing written")
    tags = []
    pos = start
    while pos < end:
        t, _s, e = _der_item(der, pos, what)
        tags.append(t)
        pos = e
    if tags != [0x30, 0x30, 0x03]:
        raise PolicyError(f"{what}: not an X.509 certificate (expected tbsCertificate, signatureAlgorithm, "
                          "signatureValue): nothing written")
    fp = hashlib.sha256(der).hexdigest().upper()
    if sha256 and str(sha256).replace(":", "").upper() != fp:
        raise PolicyError(f"{what}: the certificate's SHA-256 is {fp}, the CA set pins {sha256}: nothing written")
    enc = base64.b64encode(der).decode()
    return _PEM_BEGIN + "\n" + "".join(enc[i:i + 64] + "\n" for i in range(0, len(enc), 64)) + _PEM_END + "\n", fp
