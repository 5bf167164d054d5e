#!/usr/bin/env python3
"""Build the tokentrust.workstation collection from the repository layout (`make collection`).

The repository keeps the layout of the design (ansible.cfg, playbooks/, roles/, library/, module_utils/,
filter_plugins/ at the top) and stays the one source; the collection tree is generated:

  library/*.py          -> plugins/modules/        imports rewritten, EXAMPLES by FQCN
  library/*.ps1         -> plugins/modules/        our PowerShell modules (the .py of the same name documents them)
  module_utils/**       -> plugins/module_utils/   `ansible.module_utils.tokentrust_*` imports rewritten
  filter_plugins/*.py   -> plugins/filter/         the repository-layout import block replaced by collection imports
  callback_plugins/*.py -> plugins/callback/       the same
  plugin_utils/**       -> plugins/plugin_utils/   controller-only code (the Windows planner), imports rewritten;
                                                   _layout.py (the repository layout's loader) left out
  doc_fragments/*.py    -> plugins/doc_fragments/  named by FQCN in extends_documentation_fragment
  roles/*               -> roles/                  modules, roles and filters called by FQCN
  playbooks/*.yml       -> playbooks/              same (lab.yml stays: it drives this repository's lab)
  collection/           -> galaxy.yml, meta/runtime.yml, README.md, CHANGELOG.md, changelogs/, tests/sanity/
  LICENSE               -> LICENSE (GPL-3.0-or-later, the full text)

YAML is rewritten structurally: the file is composed into YAML nodes (with their positions), the module actions,
role references and imported playbooks are found there as Ansible reads them, and only those scalars are replaced
in place (comments and layout kept). A task named like a role, or a variable named like a module, stays as it is.

Every rewrite is checked afterwards (no short module name as a task action, no `ansible.module_utils.tokentrust`
import, no module_utils search-path patch left); a source change that defeats a rewrite fails the build with
what and where.

  python scripts/build_collection.py [--out build/collection]
prints the path of the built tarball; the tree is left in <out>/ansible_collections/<namespace>/<name>.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_PLAYBOOKS = {"lab.yml"}  # creates this repository's lab (python -m lab.build): not collection content


class BuildError(Exception):
    pass


def filter_names():
    """The filters our filter plugins define (the keys of their FilterModule.filters() dicts)."""
    names = set()
    for n in _names("filter_plugins", ".py"):
        with open(os.path.join(ROOT, "filter_plugins", n + ".py"), encoding="utf-8") as f:
            names.update(re.findall(r'^\s*"(tokentrust_\w+)":', f.read(), re.M))
    return sorted(names, key=len, reverse=True)  # longest first: no name matches as the prefix of another


def galaxy_meta():
    with open(os.path.join(ROOT, "collection", "galaxy.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _names(directory, suffix=""):
    return sorted(
        n[: -len(suffix)] if suffix else n
        for n in os.listdir(os.path.join(ROOT, directory))
        if (n.endswith(suffix) if suffix else os.path.isdir(os.path.join(ROOT, directory, n)))
        and not n.startswith(("_", "."))
    )


class Rewriter:
    def __init__(self, namespace, name):
        self.fq = f"{namespace}.{name}"
        self.mu_prefix = f"ansible_collections.{namespace}.{name}.plugins.module_utils"
        self.pu_prefix = f"ansible_collections.{namespace}.{name}.plugins.plugin_utils"
        self.modules = _names("library", ".py")
        self.roles = _names("roles")
        mods = "|".join(map(re.escape, self.modules))
        self.filters = filter_names()
        self.re_filter = re.compile(r"(\|\s*)({})\b".format("|".join(map(re.escape, self.filters))))
        self.re_doc_module = re.compile(rf"\bM\(({mods})\)")
        self.re_seealso = re.compile(rf"^(\s*- module: )({mods})(\s*)$", re.M)
        frag_dir = os.path.join(ROOT, "doc_fragments")
        frags = "|".join(map(re.escape, _names("doc_fragments", ".py") if os.path.isdir(frag_dir) else [])) or "(?!)"
        self.re_fragment = re.compile(rf"^(\s*- )((?:{frags})(?:\.\w+)?)(\s*)$", re.M)
        self.re_noqa_fqcn = re.compile(r"\s*# noqa: fqcn\[action\][^\n]*")

    # Python ---------------------------------------------------------------------------------------------
    def python(self, text, path):
        text = text.replace("ansible.module_utils.tokentrust_", f"{self.mu_prefix}.tokentrust_")
        text = re.sub(r"^(\s*)from ansible\.module_utils import (tokentrust_)", rf"\1from {self.mu_prefix} import \2",
                      text, flags=re.M)
        # our doc fragments (doc_fragments/*.py) by FQCN in extends_documentation_fragment
        text = self.re_fragment.sub(lambda m: f"{m.group(1)}{self.fq}.{m.group(2)}{m.group(3)}", text)
        # in DOCUMENTATION and RETURN, M(module) and seealso entries name our modules by FQCN
        text = self.re_doc_module.sub(lambda m: f"M({self.fq}.{m.group(1)})", text)
        text = self.re_seealso.sub(lambda m: f"{m.group(1)}{self.fq}.{m.group(2)}{m.group(3)}", text)
        m = re.search(r'^EXAMPLES = r?("""|\'\'\')(.*?)\1', text, re.M | re.S)
        if m:
            examples = self.yaml_text(m.group(2), path + " (EXAMPLES)", playbook=True)
            text = text[: m.start(2)] + examples + text[m.end(2):]
        return text

    def filter_plugin(self, text, path):
        """The block between the `repository layout` markers (module_utils/ added to ansible.module_utils' search
        path) becomes the collection's imports: the collection loader resolves them on the controller."""
        block = re.compile(r"^# --- repository layout: begin[^\n]*\n(.*?)^# --- repository layout: end\n", re.M | re.S)
        m = block.search(text)
        if not m:
            raise BuildError(f"{path}: no '# --- repository layout: begin/end' block; the filter plugin must import "
                             "our module_utils there (see filter_plugins/tokentrust.py)")
        imports = re.findall(r"^from ([\w.]+) import (tokentrust_\w+) as (\w+)$", m.group(1), re.M)
        if not imports:
            raise BuildError(f"{path}: the repository layout block imports no module_utils")
        new = "".join(f"from {self.pu_prefix if pkg == 'plugin_utils' else self.mu_prefix} import {mod} as {alias}\n"
                      for pkg, mod, alias in imports)
        return text[: m.start()] + new + text[m.end():]

    # YAML -----------------------------------------------------------------------------------------------
    def yaml_text(self, text, path, playbook=False):
        """Module actions, role references and imported playbooks are found in the parsed YAML (the composed node
        graph, with each node's position in the text) and only those scalars are rewritten in place, so comments and
        layout stay, and a task *named* like a role or a variable named like a module is left alone. Filters live
        inside Jinja strings: `| tokentrust_x` is qualified wherever it occurs."""
        text = self.re_noqa_fqcn.sub("", text)
        edits = []
        try:
            docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError as e:
            raise BuildError(f"{path}: not valid YAML: {e}") from e
        rel = path.replace(os.sep, "/")
        in_meta = "/meta/" in rel
        for doc in docs:
            if in_meta:
                self._meta_node(doc, edits)
            elif isinstance(doc, yaml.SequenceNode):
                self._task_list(doc, edits, playbook)
        for start, end, old, new in sorted(edits, reverse=True):
            if text[start:end] != old:  # a multi-line or escaped scalar: not one we write in place
                raise BuildError(f"{path}: cannot rewrite {text[start:end]!r} in place (expected {old!r})")
            text = text[:start] + new + text[end:]
        text = self.re_filter.sub(lambda m: f"{m.group(1)}{self.fq}.{m.group(2)}", text)
        return text

    def _qualify(self, node, edits, name=None):
        """Rewrite one scalar node in place (its quotes kept) to the FQCN of `name` (default: its own value)."""
        quote = node.style if node.style in ("'", '"') else ""
        edits.append((node.start_mark.index, node.end_mark.index, f"{quote}{node.value}{quote}",
                      f"{quote}{self.fq}.{name or node.value}{quote}"))

    @staticmethod
    def _items(mapping):
        return [(k.value, k, v) for k, v in mapping.value if isinstance(k, yaml.ScalarNode)]

    def _role_ref(self, node, edits):
        """A role reference: `- x` or `- role: x` / `- name: x` (roles: of a play, dependencies: of a role)."""
        if isinstance(node, yaml.ScalarNode) and node.value in self.roles:
            self._qualify(node, edits)
        elif isinstance(node, yaml.MappingNode):
            for key, _k, v in self._items(node):
                if key in ("role", "name") and isinstance(v, yaml.ScalarNode) and v.value in self.roles:
                    self._qualify(v, edits)

    def _meta_node(self, doc, edits):
        if isinstance(doc, yaml.MappingNode):
            for key, _k, v in self._items(doc):
                if key == "dependencies" and isinstance(v, yaml.SequenceNode):
                    for item in v.value:
                        self._role_ref(item, edits)

    def _task_list(self, seq, edits, playbook):
        for item in seq.value:
            if not isinstance(item, yaml.MappingNode):
                continue
            keys = dict((k, v) for k, _kn, v in self._items(item))
            if playbook and ("hosts" in keys or "import_playbook" in keys or "ansible.builtin.import_playbook" in keys):
                self._play(item, edits)
            else:
                self._task(item, edits, playbook)

    def _play(self, play, edits):
        for key, _k, v in self._items(play):
            if key in ("pre_tasks", "tasks", "post_tasks", "handlers") and isinstance(v, yaml.SequenceNode):
                self._task_list(v, edits, False)
            elif key == "roles" and isinstance(v, yaml.SequenceNode):
                for item in v.value:
                    self._role_ref(item, edits)
            elif key in ("import_playbook", "ansible.builtin.import_playbook") and isinstance(v, yaml.ScalarNode):
                stem = v.value[:-4] if v.value.endswith(".yml") else None
                if stem and re.fullmatch(r"[a-z_]+", stem) and os.path.exists(os.path.join(ROOT, "playbooks", v.value)):
                    self._qualify(v, edits, stem)

    def _task(self, task, edits, playbook):
        for key, knode, v in self._items(task):
            if key in ("block", "rescue", "always") and isinstance(v, yaml.SequenceNode):
                self._task_list(v, edits, playbook)
            elif key in self.modules:
                self._qualify(knode, edits)
            elif key in ("include_role", "import_role", "ansible.builtin.include_role", "ansible.builtin.import_role") \
                    and isinstance(v, yaml.MappingNode):
                for k2, _k2, v2 in self._items(v):
                    if k2 == "name" and isinstance(v2, yaml.ScalarNode) and v2.value in self.roles:
                        self._qualify(v2, edits)


def _copytree(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "molecule"))


def _rewrite_files(top, exts, fn):
    for dirpath, _dirs, files in os.walk(top):
        for n in files:
            if n.endswith(exts):
                p = os.path.join(dirpath, n)
                with open(p, encoding="utf-8") as f:
                    old = f.read()
                new = fn(old, p)
                if new != old:
                    with open(p, "w", encoding="utf-8") as f:
                        f.write(new)


def assemble(out):
    meta = galaxy_meta()
    ns, name = meta["namespace"], meta["name"]
    rw = Rewriter(ns, name)
    tree = os.path.join(out, "ansible_collections", ns, name)
    if os.path.exists(tree):
        shutil.rmtree(tree)
    os.makedirs(tree)
    shutil.copy2(os.path.join(ROOT, "LICENSE"), os.path.join(tree, "LICENSE"))
    src = os.path.join(ROOT, "collection")
    for n in os.listdir(src):
        copy = _copytree if os.path.isdir(os.path.join(src, n)) else shutil.copy2
        copy(os.path.join(src, n), os.path.join(tree, n))

    plugins = os.path.join(tree, "plugins")
    os.makedirs(os.path.join(plugins, "modules"))
    for m in rw.modules:
        shutil.copy2(os.path.join(ROOT, "library", m + ".py"), os.path.join(plugins, "modules", m + ".py"))
        ps1 = os.path.join(ROOT, "library", m + ".ps1")
        if os.path.exists(ps1):  # a PowerShell module of ours: the .py next to it is its documentation only
            shutil.copy2(ps1, os.path.join(plugins, "modules", m + ".ps1"))
    _copytree(os.path.join(ROOT, "module_utils"), os.path.join(plugins, "module_utils"))
    _copytree(os.path.join(ROOT, "filter_plugins"), os.path.join(plugins, "filter"))
    shutil.copytree(os.path.join(ROOT, "plugin_utils"), os.path.join(plugins, "plugin_utils"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "_layout.py"))
    if os.path.isdir(os.path.join(ROOT, "doc_fragments")):
        _copytree(os.path.join(ROOT, "doc_fragments"), os.path.join(plugins, "doc_fragments"))
    _rewrite_files(plugins, (".py",), rw.python)
    _rewrite_files(os.path.join(plugins, "filter"), (".py",), rw.filter_plugin)
    _copytree(os.path.join(ROOT, "callback_plugins"), os.path.join(plugins, "callback"))
    _rewrite_files(os.path.join(plugins, "callback"), (".py",), rw.python)
    _rewrite_files(os.path.join(plugins, "callback"), (".py",), rw.filter_plugin)

    _copytree(os.path.join(ROOT, "roles"), os.path.join(tree, "roles"))
    _rewrite_files(os.path.join(tree, "roles"), (".yml", ".yaml"), rw.yaml_text)
    os.makedirs(os.path.join(tree, "playbooks"))
    for n in sorted(os.listdir(os.path.join(ROOT, "playbooks"))):
        if n.endswith(".yml") and n not in SKIP_PLAYBOOKS:
            shutil.copy2(os.path.join(ROOT, "playbooks", n), os.path.join(tree, "playbooks", n))
    _rewrite_files(os.path.join(tree, "playbooks"), (".yml",), lambda t, p: rw.yaml_text(t, p, playbook=True))

    problems = check(tree, rw)
    if problems:
        raise BuildError("the generated collection still has short names:\n  " + "\n  ".join(problems))
    return tree, meta


def _tasks(node):
    """Every task-like mapping of a parsed tasks file or playbook (blocks and plays descended into)."""
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            if key in node:
                yield from _tasks(node[key])


def check(tree, rw):
    """What is left unqualified in the generated tree: [problem, ...]."""
    problems = []
    for dirpath, _dirs, files in os.walk(tree):
        for n in files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, tree)
            with open(p, encoding="utf-8") as f:
                text = f.read()
            if n.endswith(".py"):
                if re.search(r"^\s*(from|import) ansible\.module_utils(\.| import )tokentrust", text, re.M):
                    problems.append(f"{rel}: imports ansible.module_utils.tokentrust_*")
                if re.search(r"^\s*ansible\.module_utils\.__path__", text, re.M):
                    problems.append(f"{rel}: extends ansible.module_utils' search path")
                if re.search(r"^\s*- tokentrust_\w+(\.\w+)?\s*$", text, re.M):
                    problems.append(f"{rel}: names a doc fragment by its short name")
                if re.search(r"^from plugin_utils[. ]\S+ import|_layout\.load\(", text, re.M):
                    problems.append(f"{rel}: imports plugin_utils in the repository layout's form")
                if "sys.path.insert" in text:
                    problems.append(f"{rel}: patches sys.path")
            elif n.endswith(".yml") and ("/tasks/" in p or "/handlers/" in p or rel.startswith("playbooks")):
                for task in _tasks(yaml.safe_load(text) or []):
                    for key in task:
                        if key in rw.modules:
                            problems.append(f"{rel}: task {task.get('name', '?')!r} calls {key} by its short name")
                    for key in ("ansible.builtin.include_role", "ansible.builtin.import_role"):
                        role = (task.get(key) or {}).get("name") if isinstance(task.get(key), dict) else None
                        if role in rw.roles:
                            problems.append(f"{rel}: task {task.get('name', '?')!r} includes role {role} by short name")
                    for r in task.get("roles", []) or []:
                        role = r.get("role", r.get("name")) if isinstance(r, dict) else r
                        if role in rw.roles:
                            problems.append(f"{rel}: play {task.get('name', '?')!r} uses role {role} by short name")
            if n.endswith((".yml", ".j2")):
                for m in rw.re_filter.finditer(text):
                    problems.append(f"{rel}: filter {m.group(2)} by its short name")
    return problems


def build(out):
    tree, meta = assemble(out)
    search = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    galaxy = shutil.which("ansible-galaxy", path=search)
    if not galaxy:
        raise BuildError("ansible-galaxy not found next to this Python or on PATH: run `make setup` first")
    tarball = os.path.join(out, f"{meta['namespace']}-{meta['name']}-{meta['version']}.tar.gz")
    if os.path.exists(tarball):
        os.unlink(tarball)
    r = subprocess.run([galaxy, "collection", "build", "--force", "--output-path", os.path.abspath(out), tree],
                       capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(tarball):
        raise BuildError(f"ansible-galaxy collection build failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return tarball, tree


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "collection"),
                    help="output directory (default: build/collection)")
    args = ap.parse_args(argv)
    try:
        tarball, tree = build(args.out)
    except BuildError as e:
        print(f"build_collection: {e}", file=sys.stderr)
        return 1
    print(f"tree:    {tree}")
    print(f"tarball: {tarball}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
