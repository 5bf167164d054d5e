"""MOCK Windows host harness: run our real Windows roles through the real ansible-playbook on the
controller, with the ansible.windows modules replaced by tests/support/winsim/action_plugins/normal.py.

What is real: Ansible's templating of every task (the args a module would receive), our filter plugin
and module_utils, the roles' control flow, the installed ansible.windows modules' DOCUMENTATION (args
are validated against it, through `ansible-doc --json`) and the store names of their .ps1 sources.
What is a MOCK: the Windows host (a JSON state file) and the modules' effects on it. Our own PowerShell modules
(library/win_tokentrust_*.ps1, the probes) are answered from THEIR source: argument spec, statements, result keys.
"""
import functools
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.path.dirname(sys.executable)
HERE = os.path.dirname(os.path.abspath(__file__))


def windows_collection():
    """The installed ansible.windows folder (bundled with the `ansible` package)."""
    hits = glob.glob(os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages", "ansible_collections",
                                  "ansible", "windows"))
    if not hits:
        import ansible_collections.ansible.windows as w  # noqa: PLC0415

        hits = list(w.__path__)[:1]  # a namespace package (no __init__.py): its __file__ is None
    return hits[0]


def collection_version(path=None):
    with open(os.path.join(path or windows_collection(), "MANIFEST.json"), encoding="utf-8") as f:
        return json.load(f)["collection_info"]["version"]


def module_source(module, ext="ps1"):
    with open(os.path.join(windows_collection(), "plugins", "modules", f"{module}.{ext}"), encoding="utf-8") as f:
        return f.read()


def system_store_names():
    """System store names win_certificate_store.ps1 itself lists (the stores of a Windows certificate
    location), plus its one alias mapping {alias: name}."""
    src = module_source("win_certificate_store")
    m = re.search(r"((?:'[A-Za-z]+',\s*)+'[A-Za-z]+')\s*\|\s*\n?\s*ForEach-Object", src)
    names = re.findall(r"'([A-Za-z]+)'", m.group(1))
    aliases = dict(re.findall(r"if \(\$store_name -eq '([A-Za-z]+)'\) \{\s*\$store_name = '([A-Za-z]+)'", src))
    return names, aliases


@functools.cache
def ansible_doc(fqcns):
    """`ansible-doc --json` of the installed modules: {fqcn: doc}."""
    p = subprocess.run([os.path.join(BIN, "ansible-doc"), "--json", "-t", "module", *fqcns], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg")))
    if p.returncode != 0:
        raise AssertionError(f"ansible-doc failed: {p.stderr}")
    return {k: v["doc"] for k, v in json.loads(p.stdout).items()}


def option_specs(doc):
    """{option name and aliases: {choices}} from one module's ansible-doc."""
    out = {}
    for name, o in (doc.get("options") or {}).items():
        for n in [name, *(o.get("aliases") or [])]:
            out[n] = {"choices": o.get("choices"), "comma": comma_separated(o)}
    return out


def comma_separated(option_doc):
    """True for a str option whose documentation says it takes a comma separated list of its choices
    (win_acl `inherit`: "ContainerInherit, ObjectInherit")."""
    text = " ".join(option_doc.get("description") or []) if isinstance(option_doc.get("description"), list) \
        else str(option_doc.get("description") or "")
    return option_doc.get("type", "str") == "str" and "comma separated" in text.lower()


def split_value(value, comma):
    if isinstance(value, list):
        return value
    if comma and isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    return [value]


SIMULATED = ("win_certificate_info", "win_certificate_store", "win_reg_stat", "win_regedit", "win_stat", "win_file",
             "win_copy", "win_acl", "win_acl_inheritance", "win_owner", "win_powershell", "win_package",
             "win_reboot", "win_ping", "win_service")


def shadow_collection(tmp):
    """ansible.windows without its action plugins (so every module falls back to our MOCK `normal`)."""
    real = windows_collection()
    base = os.path.join(str(tmp), "ansible_collections", "ansible")
    dst = os.path.join(base, "windows")
    os.makedirs(os.path.join(dst, "plugins"), exist_ok=True)
    for entry in os.listdir(real):
        if entry != "plugins":
            os.symlink(os.path.join(real, entry), os.path.join(dst, entry))
    for entry in os.listdir(os.path.join(real, "plugins")):
        if entry != "action":
            os.symlink(os.path.join(real, "plugins", entry), os.path.join(dst, "plugins", entry))
    return str(tmp)


# A French Windows 11: the well-known accounts by their localized names (what NTAccount.Translate gives).
FRENCH_ACCOUNTS = {"S-1-5-32-544": "BUILTIN\\Administrateurs", "S-1-5-18": "AUTORITE NT\\Système",
                   "S-1-5-32-545": "BUILTIN\\Utilisateurs", "S-1-3-0": "CREATEUR PROPRIETAIRE",
                   "S-1-5-11": "AUTORITE NT\\Utilisateurs authentifiés",
                   "S-1-5-21-1-2-3-500": "PC-01\\Administrateur", "S-1-5-21-1-2-3-1001": "PC-01\\mallory"}
_INHERIT = "ContainerInherit, ObjectInherit"
# C:\ProgramData's own ACL (icacls on Windows 11): Users may read, and create folders and files (the reason for
# windows_private_dir); CREATOR OWNER gets full control of what they create.
PROGRAMDATA_ACL = [
    {"sid": "S-1-5-18", "rights": "FullControl", "type": "allow", "inherit": _INHERIT, "propagation": "None"},
    {"sid": "S-1-5-32-544", "rights": "FullControl", "type": "allow", "inherit": _INHERIT, "propagation": "None"},
    {"sid": "S-1-3-0", "rights": "FullControl", "type": "allow", "inherit": _INHERIT, "propagation": "InheritOnly"},
    {"sid": "S-1-5-32-545", "rights": "ReadAndExecute", "type": "allow", "inherit": _INHERIT, "propagation": "None"},
    {"sid": "S-1-5-32-545", "rights": "Write", "type": "allow", "inherit": "ContainerInherit", "propagation": "None"},
]


# The environment of the PowerShell our modules run in (64-bit, over WinRM) on a Windows 11 with Program Files where
# the installer puts it; a test relocates them (ProgramFiles on D:\) or drops one (no ProgramFiles(x86) on 32-bit
# Windows). The MOCK's Firefox probe expands the paths it is given with these, as far as the module's source does.
DEFAULT_ENV = {"ProgramFiles": "C:\\Program Files", "ProgramFiles(x86)": "C:\\Program Files (x86)",
               "ProgramW6432": "C:\\Program Files", "SystemRoot": "C:\\Windows"}
PE_MACHINES = {"x64": 0x8664, "x86": 0x14C, "arm64": 0xAA64}


def host_env(state):
    """The MOCK host's environment variables (DEFAULT_ENV for a state saved without them)."""
    return dict(state["env"]) if "env" in state else dict(DEFAULT_ENV)


def expand_env(path, env, program_files_64=False, environment=True):
    """`program_files_64`: %ProgramFiles% first means the 64-bit folder (ProgramW6432 when defined), as the Firefox
    probe does; `environment`: then [Environment]::ExpandEnvironmentVariables with `env`, each %NAME% of a defined
    variable (names case-insensitive) replaced, an undefined one left as it is."""
    folded = {k.casefold(): v for k, v in env.items()}
    if program_files_64:
        pf64 = folded.get("programw6432") or folded.get("programfiles")
        if pf64:
            path = re.sub("%ProgramFiles%", lambda _m: pf64, path, flags=re.IGNORECASE)
    if not environment:
        return path
    return re.sub(r"%([^%]+)%", lambda m: folded.get(m.group(1).casefold(), m.group(0)), path)


def _key(path):
    return path.replace("/", "\\").rstrip("\\").casefold()


def pe_file(state, path, arch="x64", version=None):
    """Put a PE image on the MOCK host: a file whose IMAGE_FILE_HEADER.Machine is that of `arch`, whose
    ProductVersion is `version` (what the Firefox probe reads of firefox.exe and gclib.dll)."""
    state["files"][_key(path)] = {"content": f"MZ (a {arch} PE image of the MOCK host)", "machine": PE_MACHINES[arch],
                                  "version": version}
    return state


def firefox_and_classic_client(state, firefox_arch="x64", version="128.5.0", gclib_arch=None, vendor="Gemalto"):
    """Firefox and Classic Client's gclib.dll installed where their installers put them on this host: the
    Program Files folder of their bitness, from the host's own environment (a relocated ProgramFiles included)."""
    env = host_env(state)
    folder = {"x64": env.get("ProgramW6432") or env.get("ProgramFiles"), "arm64": env.get("ProgramW6432"),
              "x86": env.get("ProgramFiles(x86)") or env.get("ProgramFiles")}
    pe_file(state, folder[firefox_arch] + "\\Mozilla Firefox\\firefox.exe", firefox_arch, version)
    arch = gclib_arch or firefox_arch
    pe_file(state, folder[arch] + f"\\{vendor}\\Classic Client\\BIN\\gclib.dll", arch, "10.8.0.0")
    return state


def new_state(**kw):
    names, _ = system_store_names()
    state = {"stores": {f"LocalMachine\\{n}": {} for n in names}, "registry": {}, "files": {}, "dirs": {},
             "powershell": {}, "calls": [], "installed": [], "reboots": 0, "accounts": dict(FRENCH_ACCOUNTS),
             "computername": "PC-01", "env": dict(DEFAULT_ENV),
             # Windows 11's default: Manual (trigger start), stopped until a card is inserted
             "services": {"CertPropSvc": {"start_mode": "manual", "state": "stopped"}}}
    state["dirs"]["c:\\programdata"] = {"owner": "S-1-5-18", "inherit": False,
                                        "acl": [dict(e, inherited=False) for e in PROGRAMDATA_ACL]}
    state["registry"]["hklm:\\software\\microsoft\\windows\\currentversion\\policies\\system"] = {
        "EnableLUA": {"type": "REG_DWORD", "data": 1}, "ConsentPromptBehaviorAdmin": {"type": "REG_DWORD", "data": 5},
        "PromptOnSecureDesktop": {"type": "REG_DWORD", "data": 1}}
    state.update(kw)
    return state


class Host:
    """One MOCK Windows host and the playbook runs against it."""

    def __init__(self, tmp, state=None, roles=None, library=None):
        self.tmp = tmp
        self.roles = roles or os.path.join(ROOT, "roles")
        # our modules (the probes, library/win_tokentrust_*.ps1): those next to the roles (a test's copy), else ours
        near = os.path.join(os.path.dirname(os.path.abspath(self.roles)), "library")
        self.library = library or (near if os.path.isdir(near) else os.path.join(ROOT, "library"))
        self.path = os.path.join(str(tmp), "winsim_state.json")
        self.collections = shadow_collection(os.path.join(str(tmp), "collections"))
        specs = ansible_doc(tuple(f"ansible.windows.{m}" for m in SIMULATED))
        self.specs = {k.split(".")[-1]: option_specs(v) for k, v in specs.items()}
        self.save(state or new_state())

    def load(self):
        with open(self.path, encoding="utf-8") as f:
            return json.load(f)

    def save(self, state):
        state["specs"] = self.specs
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(state, f)

    def calls(self, module=None):
        return [c for c in self.load()["calls"] if module is None or c["module"] == module]

    def clear_calls(self):
        s = self.load()
        s["calls"] = []
        self.save(s)

    def play(self, tasks, extra_vars=None, check=False, name="play.yml"):
        pb = os.path.join(str(self.tmp), name)
        with open(pb, "w", encoding="utf-8") as f:
            json.dump([{"name": "winsim", "hosts": "winpc", "gather_facts": False, "tasks": tasks}], f)
        return self._run_file(pb, extra_vars, check)

    def playbook(self, path, extra_vars=None, check=False):
        """One of our playbooks (path relative to the repository) against the MOCK host."""
        ev = dict({"tokentrust_windows_hosts": "winpc"}, **(extra_vars or {}))
        return self._run_file(os.path.join(ROOT, path), ev, check)

    def _run_file(self, pb, extra_vars=None, check=False):
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
                   ANSIBLE_ACTION_PLUGINS=os.path.join(HERE, "action_plugins"),
                   ANSIBLE_ROLES_PATH=self.roles, ANSIBLE_LIBRARY=self.library, TOKENTRUST_WINSIM_LIBRARY=self.library,
                   TOKENTRUST_WINSIM_STATE=self.path,
                   TOKENTRUST_WINSIM_ROLES=self.roles, TOKENTRUST_WINSIM_ROOT=ROOT,
                   PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        cmd = [os.path.join(BIN, "ansible-playbook"), "-i", "winpc,", "-c", "local", pb,
               "-e", json.dumps({"ansible_python_interpreter": sys.executable, **(extra_vars or {})})]
        if check:
            cmd.append("--check")
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    def role(self, name, tasks_from="main", extra_vars=None, check=False):
        return self.run([(name, tasks_from)], extra_vars, check)[0]

    def run(self, roles, extra_vars=None, check=False, facts=()):
        """Include each role (name or (name, tasks_from)), then dump `facts` to JSON; returns (proc, facts)."""
        tasks = []
        for r in roles:
            name, tasks_from = (r, "main") if isinstance(r, str) else r
            tasks.append({"name": f"role {name}",
                          "ansible.builtin.include_role": {"name": name, "tasks_from": tasks_from}})
        out = os.path.join(str(self.tmp), "facts.json")
        if os.path.exists(out):
            os.unlink(out)
        if facts:
            content = "{{ {" + ", ".join(f"'{f}': {f} | default(none)" for f in facts) + "} | to_json }}"
            tasks.append({"name": "dump facts", "ansible.builtin.copy": {"dest": out, "content": content}})
        p = self.play(tasks, extra_vars, check)
        got = {}
        if facts and os.path.exists(out):
            with open(out, encoding="utf-8") as f:
                got = json.load(f)
        return p, got


def ca_set():
    """The lab's CertEurope stand-in as the CA set role ca_certificates would publish."""
    from lab.pki import certeurope_standin  # noqa: PLC0415

    out = []
    for name, c in certeurope_standin().items():
        root = c.cert.issuer == c.cert.subject
        out.append({"name": name, "sha1": c.sha1, "sha256": c.sha256, "role": "root" if root else "intermediate",
                    "pem": c.pem.decode(), "expired": False})
    return out


def recap(proc):
    """{'ok': n, 'changed': n, 'failed': n, ...} of the one host."""
    m = re.search(r"winpc\s+:\s+(.*)", proc.stdout)
    if not m:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
