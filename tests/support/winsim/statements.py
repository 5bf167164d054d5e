"""What the MOCK Windows host derives from a probe's own statements, instead of a hand-written answer.

The MOCK cannot run PowerShell. Where a probe's meaning sits in a few statements (which registry views it
opens, whether it recurses into Group Policy subkeys, the ACL a folder is created with, a value it emits as a
constant), the MOCK reads those statements from the probe's syntax tree (tree-sitter-powershell, psshape) and
answers what a host would answer to THAT code, so a probe that stops reading the 32-bit view, or builds a
different ACL, gets a different answer and the role's tests see it.
"""
from __future__ import annotations

import re

from tests.support.winsim import psshape

_TRUE = {"$true": True, "$false": False}


def _nodes(text, kind):
    return [n for n in psshape._descendants(psshape.parse(text).root_node) if n.type == kind]  # noqa: SLF001


def _t(n):
    return n.text.decode()


def constant_leaves(text):
    """{key: value} for result keys every hashtable of the probe sets to the same quoted literal (or $null):
    what a host answers whatever it holds (e.g. `owner_sid = 'S-1-5-32-544'`)."""
    seen = {}
    for e in _nodes(text, "hash_entry"):
        if _in_spec(e):  # a module's argument spec is not part of its result
            continue
        kids = psshape._named(e)  # noqa: SLF001
        key = _t(psshape._unwrap(kids[0])).strip("'\"")  # noqa: SLF001
        val = psshape._unwrap(kids[-1])  # noqa: SLF001
        v = _t(val)
        if v.casefold() == "$null":
            seen.setdefault(key, set())
            continue
        lit = v[1:-1] if val.type == "string_literal" and v.startswith("'") and v.endswith("'") else None
        seen.setdefault(key, set()).add(lit)
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1 and None not in v}


def _in_spec(n):
    """True for a node inside the `$spec = @{...}` assignment of a module (Ansible.Basic's argument spec)."""
    p = n.parent
    while p is not None:
        if p.type == "assignment_expression" and _t(p).lstrip().casefold().startswith("$spec"):
            return True
        p = p.parent
    return False


def apply_constants(answer, constants):
    """The answer with every non-null value of a constant key replaced by the constant, at any depth."""
    if isinstance(answer, dict):
        return {k: (constants[k] if k in constants and v is not None else apply_constants(v, constants))
                for k, v in answer.items()}
    if isinstance(answer, list):
        return [apply_constants(v, constants) for v in answer]
    return answer


def registry_views(text):
    """The registry views the probe opens with RegistryKey.OpenBaseKey (bits: 64, 32), as literals in the
    collection its loop walks (`'Registry64'`, `@{ name = 'Registry32'; ... }`)."""
    views = set()
    for f in _nodes(text, "foreach_statement"):
        coll = next((c for c in psshape._named(f) if c.type == "pipeline"), None)  # noqa: SLF001
        if coll is not None and "OpenBaseKey" in _t(f):
            views |= {int(b) for b in re.findall(r"'Registry(64|32)'", _t(coll))}
    return views


def function_recurses(text, name):
    """True when function `name` calls itself (the Firefox probe's Read-Key walking subkeys)."""
    body = _function_block(text, name)
    if body is None:
        raise KeyError(f"the probe has no function {name}")
    return any(_t(c).casefold() == name.casefold() for c in psshape._descendants(body)  # noqa: SLF001
               if c.type == "command_name")


def created_acl(text, params, parent):
    """The folder private_dir_create.ps1 makes, from its statements: {owner, inherit, acl}.

    `SetAccessRuleProtection(isProtected, preserveInheritance)`; every `AddAccessRule(FileSystemAccessRule(
    SecurityIdentifier($s), rights, inheritance, propagation, type))` inside `foreach ($s in <sids>)`, with
    <sids> a literal list or a parameter; `SetOwner(SecurityIdentifier('<sid>'))`. An unprotected DACL also
    gets the parent's inheritable entries (marked inherited), as Windows does."""
    m = re.search(r"SetAccessRuleProtection\(\s*(\$\w+)\s*,\s*(\$\w+)\s*\)", text)
    protected = _TRUE[m.group(1).casefold()] if m else False
    flags = re.search(r"\$inherit\s*=\s*\[System\.Security\.AccessControl\.InheritanceFlags\]'([^']*)'", text)
    inherit = flags.group(1) if flags else "None"
    acl = []
    for f in _nodes(text, "foreach_statement"):
        var = next(c for c in psshape._named(f) if c.type == "variable")  # noqa: SLF001
        coll = next(c for c in psshape._named(f) if c.type == "pipeline")  # noqa: SLF001
        body = _t(next(c for c in psshape._named(f) if c.type == "statement_block"))  # noqa: SLF001
        rule = re.search(r"AddAccessRule\(.*?SecurityIdentifier\]::new\(\s*" + re.escape(_t(var)) +
                         r"\s*\)\s*,\s*'(\w+)'\s*,\s*\$\w+\s*,\s*\$\w+\s*,\s*'(\w+)'", body, re.S)
        if not rule:
            continue
        c = _t(coll).strip()
        if c.startswith("$"):
            sids = params.get(c[1:]) or next((v for k, v in params.items() if k.casefold() == c[1:].casefold()), [])
        else:
            sids = re.findall(r"'(S-1-[\d-]+)'", c)
        for s in sids:
            acl.append({"sid": str(s).upper(), "rights": rule.group(1), "type": rule.group(2).lower(),
                        "inherit": inherit, "propagation": "None", "inherited": False})
    if not protected:
        acl += [dict(e, inherited=True) for e in (parent or {}).get("acl", [])
                if "ContainerInherit" in str(e.get("inherit", "")) or "ObjectInherit" in str(e.get("inherit", ""))]
    owner = re.search(r"SetOwner\(\s*\[System\.Security\.Principal\.SecurityIdentifier\]::new\('([^']+)'\)", text)
    return {"owner": owner.group(1) if owner else None, "inherit": not protected, "acl": acl}


def appeared_refusal(text):
    """The message of the script's `throw` (a module's `$module.FailJson("...")`) when the folder exists although
    the probe found it missing (`if (-not $Existed) { ... }`), or None when the script does not refuse."""
    m = re.search(r"if\s*\(\s*-not\s+\$Existed\s*\)\s*\{\s*(?:throw\s+|\$module\.FailJson\(\s*)\"([^\"]+)\"", text)
    return m.group(1) if m else None


def replaces_existing_acl(text):
    """True when the script writes its DACL onto a folder that exists (Set-Acl / SetAccessControl with $sec)."""
    return bool(re.search(r"Set-Acl\s+-LiteralPath\s+\$Path\s+-AclObject\s+\$sec"
                          r"|\.SetAccessControl\(\s*\$sec\s*\)", text))


def _function_block(text, name):
    """The script_block node of function `name` (None when the script has no such function)."""
    for fn in _nodes(text, "function_statement"):
        fname = next(c for c in fn.children if c.type == "function_name")
        if _t(fname).casefold() == name.casefold():
            return next(c for c in fn.children if c.type == "script_block")
    return None


def _function_body(text, name):
    block = _function_block(text, name)
    return None if block is None else _t(block)


def path_expansion(text, variable):
    """How the probe turns each item of the list `variable` (a module option's variable: GclibPaths,
    FirefoxDirs) into the path it looks at, from its statements: {"program_files_64": bool, "environment": bool}.
    The loop over `$variable` hands the item to a function of the probe (`(Expand-HostPath $p)`); environment: that
    function calls [Environment]::ExpandEnvironmentVariables; program_files_64: it first replaces %ProgramFiles%
    (-replace / -ireplace '%ProgramFiles%') by a value the script takes from $env:ProgramW6432 (the 64-bit folder,
    even in a 32-bit PowerShell). Both false when the item is used as given."""
    for f in _nodes(text, "foreach_statement"):
        var = next((c for c in psshape._named(f) if c.type == "variable"), None)  # noqa: SLF001
        coll = next((c for c in psshape._named(f) if c.type == "pipeline"), None)  # noqa: SLF001
        body = next((c for c in psshape._named(f) if c.type == "statement_block"), None)  # noqa: SLF001
        if var is None or coll is None or body is None or _t(coll).strip().casefold() != "$" + variable.casefold():
            continue
        how = {"program_files_64": False, "environment": False}
        for fn in re.findall(r"\(\s*([A-Za-z][\w-]*)\s+" + re.escape(_t(var)) + r"\s*\)", _t(body)):
            fbody = _function_body(text, fn) or ""
            if re.search(r"\[(System\.)?Environment\]::ExpandEnvironmentVariables\(", fbody, re.I):
                how["environment"] = True
            if re.search(r"-i?replace\s+'%ProgramFiles%'", fbody, re.I) and \
                    re.search(r"=\s*(if\s*\(\s*)?\$env:ProgramW6432", text, re.I):
                how["program_files_64"] = True
        return how
    raise KeyError(f"the probe has no loop over ${variable}")


def guards_undefined_variables(text):
    """True when the probe's Get-FileInfo tells a path still holding a %VARIABLE% (undefined on the host) apart,
    before Test-Path (which would take it as a path relative to the current folder)."""
    body = _function_body(text, "Get-FileInfo") or ""
    m = re.search(r"-match\s+'%\[\^%", body)
    return bool(m) and m.start() < body.find("Test-Path")
