"""What a PowerShell probe of ours puts in `$Ansible.Result`, derived from its syntax tree.

The tree comes from a maintained PowerShell grammar (tree-sitter-powershell, from PyPI), so a probe that
is not PowerShell fails here, in the tests and in the MOCK host (tests/support/winsim), before any role
reads its output.

From the tree, a small abstract interpreter follows the variables, hashtable literals, `@( )` arrays,
`foreach` loops, `ForEach-Object` blocks, `if` expressions, `List.Add` calls, `$h.key = ...` and
`$h[$k] = ...` assignments and the probe's own functions, and returns the SHAPE of the result:

    {"t": "dict", "keys": {name: shape}}   a hashtable or [PSCustomObject] with literal keys
    {"t": "map", "of": shape}              a hashtable filled with computed keys ($h[$k] = ...)
    {"t": "list", "of": shape}             an array or List[object]
    {"t": "scalar"}                        string, number, bool (and casts to them, operators, strings)
    {"t": "null"}                          $null
    {"t": "regvalue"}                      RegistryKey.GetValue(): a string or number, or an array of them
    {"t": "any"}                           a .NET value we do not follow (a method's return value)

A typed parameter (`[string]$Path`, `[string[]]$Paths` of the script or of one of its functions) is a scalar
(a list of scalars). `loose_leaves(shape)` lists the result's leaves that are "any": a .NET object (a
ServiceControllerStatus enum, a SecurityIdentifier...) that ConvertTo-Json / Ansible would serialize as an
object ({Value, ...}) or a number, not the string the Python expects: every emitted leaf must be a string,
number or bool, or explicitly cast to one (`[string]`, `"$(...)"`, `[int]`).

Its container depth gives the `depth` win_powershell needs: ansible.windows' Convert-OutputObject
(plugins/modules/win_powershell.ps1) turns every dictionary, list or object nested deeper than `depth`
into a string ("System.Collections.Hashtable").  `convert_output` applies that rule to a Python value.
"""
from __future__ import annotations

import functools
import re

SCALAR = {"t": "scalar"}
NULL = {"t": "null"}
ANY = {"t": "any"}
REGVALUE = {"t": "regvalue"}  # RegistryKey.GetValue: a string, a number, or an array (REG_MULTI_SZ, REG_BINARY)
CONTAINERS = ("dict", "map", "list")


class ProbeError(ValueError):
    """The probe is not PowerShell, or its result cannot be derived from its tree."""


@functools.cache
def _parser():
    import tree_sitter_powershell  # noqa: PLC0415
    from tree_sitter import Language, Parser  # noqa: PLC0415

    return Parser(Language(tree_sitter_powershell.language()))


def parse(text):
    """The syntax tree of `text`; ProbeError naming the first lines that are not PowerShell."""
    tree = _parser().parse(text.encode("utf-8") if isinstance(text, str) else text)
    bad = []

    def walk(n):
        if n.type == "ERROR" or n.is_missing:
            bad.append(n)
            return
        if n.has_error:
            for c in n.children:
                walk(c)

    walk(tree.root_node)
    if bad:
        where = ", ".join(f"line {n.start_point[0] + 1} col {n.start_point[1] + 1}" for n in bad[:5])
        raise ProbeError(f"not valid PowerShell (tree-sitter-powershell): syntax error at {where}")
    return tree


def _param_block(text):
    """Names of the script's param() block."""
    root = parse(text).root_node
    out = []
    for blk in root.children:
        if blk.type == "param_block":
            for n in _descendants(blk):
                if n.type == "script_parameter":
                    v = next((c for c in n.children if c.type == "variable"), None)
                    if v is not None:
                        out.append(v.text.decode()[1:])
    return out


def _descendants(n):
    for c in n.children:
        yield c
        yield from _descendants(c)


def union(a, b):
    if a is None:
        return b
    if b is None:
        return a
    ta, tb = a["t"], b["t"]
    if ta == "null":
        return b
    if tb == "null":
        return a
    if ta == "any":  # a .NET value next to something we know: the known shape decides the depth
        return b
    if tb == "any":
        return a
    if ta == tb == "scalar":
        return SCALAR
    if "regvalue" in (ta, tb):
        other = b if ta == "regvalue" else a
        return other if other["t"] == "list" else REGVALUE
    if ta == tb == "list":
        return {"t": "list", "of": union(a["of"], b["of"])}
    if ta == tb == "dict":
        keys = dict(a["keys"])
        for k, v in b["keys"].items():
            keys[k] = union(keys.get(k), v)
        return {"t": "dict", "keys": keys}
    if {ta, tb} == {"dict", "map"}:
        d, m = (a, b) if ta == "dict" else (b, a)
        if not d["keys"]:  # `$h = @{}` later filled by $h[$k] = ...
            return m
        of = m["of"]
        for v in d["keys"].values():
            of = union(of, v)
        return {"t": "map", "of": of}
    if ta == tb == "map":
        return {"t": "map", "of": union(a["of"], b["of"])}
    if "scalar" in (ta, tb):  # a value that is sometimes a container: the container decides the depth
        return a if ta != "scalar" else b
    raise ProbeError(f"a value is sometimes a {ta}, sometimes a {tb}")


def container_depth(shape):
    """1 + levels of containers below (0 for a leaf)."""
    t = shape["t"]
    if t == "dict":
        return 1 + max([container_depth(v) for v in shape["keys"].values()] or [0])
    if t in ("map", "list"):
        return 1 + container_depth(shape["of"])
    return 1 if t == "regvalue" else 0


def depth_needed(shape):
    """The smallest win_powershell `depth` that returns this shape intact (Convert-OutputObject)."""
    return max(container_depth(shape) - 1, 0)


def convert_output(value, depth):
    """ansible.windows win_powershell's Convert-OutputObject on a Python value: strings, numbers, bools
    and None pass at any depth; a dict or list at depth < 0 becomes the string PowerShell's [string] cast
    gives (System.Collections.Hashtable; a list's items joined by spaces)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth < 0:
        if isinstance(value, dict):
            return "System.Collections.Hashtable"
        return " ".join(str(convert_output(v, -1)) for v in value)
    if isinstance(value, dict):
        return {k: convert_output(v, depth - 1) for k, v in value.items()}
    return [convert_output(v, depth - 1) for v in value]


def conforms(value, shape, where="result"):
    """Problems of `value` (a probe's answer, before depth) against `shape` (derived from the probe)."""
    t = shape["t"]
    if value is None or t == "any":
        return []
    if t == "regvalue":
        ok = isinstance(value, (str, bool, int, float)) or (isinstance(value, list) and all(
            isinstance(v, (str, int)) for v in value))
        return [] if ok else [f"{where}: a {type(value).__name__}, the probe emits a registry value"]
    if t == "scalar":
        return [] if isinstance(value, (str, bool, int, float)) else [f"{where}: a {type(value).__name__}, "
                                                                          "the probe emits a plain value"]
    if t == "dict":
        if not isinstance(value, dict):
            return [f"{where}: a {type(value).__name__}, the probe emits a hashtable"]
        out = [f"{where}.{k}: not emitted by the probe" for k in value if k not in shape["keys"]]
        out += [f"{where}.{k}: the probe emits it, missing here" for k in shape["keys"] if k not in value]
        for k, v in value.items():
            if k in shape["keys"]:
                out += conforms(v, shape["keys"][k], f"{where}.{k}")
        return out
    if t == "map":
        if not isinstance(value, dict):
            return [f"{where}: a {type(value).__name__}, the probe emits a hashtable"]
        out = []
        for k, v in value.items():
            out += conforms(v, shape["of"], f"{where}[{k!r}]")
        return out
    if t == "list":
        if not isinstance(value, list):
            return [f"{where}: a {type(value).__name__}, the probe emits an array"]
        out = []
        for i, v in enumerate(value):
            out += conforms(v, shape["of"], f"{where}[{i}]")
        return out
    return [f"{where}: the probe emits {t}"]


# ---------------------------------------------------------------------------------------------------
# the abstract interpreter
# ---------------------------------------------------------------------------------------------------
_SCALAR_CASTS = {"int", "int32", "int64", "long", "uint32", "uint64", "string", "bool", "double", "char",
                 "byte", "datetime", "version", "guid"}
_OUTPUT_CMDLETS_PASS = {"where-object", "sort-object", "select-object"}


def _unwrap(n):
    while n.child_count == 1 and n.type not in ("variable", "hash_literal_expression", "string_literal"):
        n = n.children[0]
    return n


def _named(n):
    return [c for c in n.children if c.is_named and c.type not in ("comment", "command_argument_sep",
                                                                   "empty_statement")]


def typed_params(node):
    """{name (casefolded): shape} of the typed parameters declared directly by `node` (a param_block or a
    function_statement)."""
    out = {}
    for n in _descendants(node):
        if n.type == "script_block" and node.type == "function_statement":
            break
        if n.type != "script_parameter":
            continue
        var = next((c for c in n.children if c.type == "variable"), None)
        lits = [d for d in _descendants(n) if d.type == "type_literal"]
        if var is None or not lits:
            continue
        ct = re.sub(r"^\[|\]$", "", lits[-1].text.decode()).strip().casefold()
        name = var.text.decode()[1:].casefold()
        if ct.endswith("[]") and ct[:-2] in _SCALAR_CASTS:
            out[name] = {"t": "list", "of": SCALAR}
        elif ct in _SCALAR_CASTS or ct == "switch":
            out[name] = SCALAR
    return out


def loose_leaves(shape, prefix=()):
    """Key paths of the leaves of `shape` that are not a string, number, bool or null ("any")."""
    t = shape["t"]
    if t == "any":
        return [prefix]
    if t == "dict":
        return [p for k, v in shape["keys"].items() for p in loose_leaves(v, (*prefix, k))]
    if t == "map":
        return loose_leaves(shape["of"], (*prefix, "*"))
    if t == "list":
        return loose_leaves(shape["of"], (*prefix, "[]"))
    return []


class _Interp:
    def __init__(self, root):
        self.functions = {}
        self.result = None
        self.stack = []
        for n in _descendants(root):
            if n.type == "function_statement":
                name = next(c for c in n.children if c.type == "function_name").text.decode()
                self.functions[name.casefold()] = n

    # statements -> (outputs)
    def block(self, n, env):
        """Run a statement_list (or a node holding one); returns the shape of what it outputs."""
        out = None
        for s in _named(n):
            out = union(out, self.statement(s, env))
        return out

    def statement(self, s, env):
        s = _unwrap(s)
        t = s.type
        if t in ("param_block", "function_statement", "comment", "empty_statement"):
            return None
        if t in ("statement_list", "statement_block"):
            return self.block(s, env)
        if t == "assignment_expression":
            self.assign(s, env)
            return None
        if t == "foreach_statement":
            var = next(c for c in _named(s) if c.type == "variable")
            coll = next(c for c in _named(s) if c.type == "pipeline")
            body = next(c for c in _named(s) if c.type == "statement_block")
            env[var.text.decode()[1:].casefold()] = self.element_of(self.expr(coll, env))
            return self.block(body, env)
        if t in ("while_statement", "for_statement", "do_statement"):
            return self._blocks(s, env)
        if t == "if_statement":
            out = None
            for c in _named(s):
                if c.type in ("statement_list", "statement_block"):
                    out = union(out, self.block(c, env))
                elif c.type in ("elseif_clauses", "elseif_clause", "else_clause"):
                    out = union(out, self._blocks(c, env))
            return out
        if t == "try_statement" or t in ("catch_clauses", "catch_clause", "finally_clause"):
            return self._blocks(s, env)
        if t == "flow_control_statement":
            kids = _named(s)
            return self.expr(kids[0], env) if kids and s.text.decode().lower().startswith("return") else None
        if t == "pipeline" and any(c.type == "assignment_expression" for c in s.children):
            return self.block(s, env)
        return self.output(s, env)

    def _blocks(self, s, env):
        out = None
        for c in _named(s):
            if c.type in ("statement_list", "statement_block"):
                out = union(out, self.block(c, env))
            elif c.type in ("catch_clauses", "catch_clause", "finally_clause", "elseif_clause", "elseif_clauses",
                            "else_clause", "script_block"):
                out = union(out, self._blocks(c, env))
        return out

    def output(self, n, env):
        """A statement that writes to the output stream: its shape (None if it writes nothing)."""
        n = _unwrap(n)
        if n.type == "cast_expression" and _cast_type(n) == "void":
            return None
        if n.type == "invokation_expression":
            return self.invoke(n, env)
        if n.type in ("pipeline", "pipeline_chain", "command"):
            return self.pipeline(n, env)
        return self.expr(n, env)

    def pipeline(self, n, env):
        """Output of a pipeline, as the shape of ONE object it writes."""
        stages = [c for c in _named(n) if c.type != "pipeline_chain"] if n.type != "command" else [n]
        if n.type == "pipeline":
            chain = next((c for c in n.children if c.type == "pipeline_chain"), None)
            if chain is not None:
                stages = _named(chain)
        cur = None
        for st in stages:
            st = _unwrap(st)
            if st.type != "command":
                cur = self.element_of(self.expr(st, env))
                continue
            name = next((c.text.decode() for c in st.children if c.type == "command_name"), "").casefold()
            blocks = [c for c in _descendants(st) if c.type == "script_block_expression"]
            if name in ("foreach-object", "%") and blocks:
                inner = dict(env)
                inner["_"] = cur if cur is not None else ANY
                cur = self.block(_script_body(blocks[0]), inner)
            elif name in _OUTPUT_CMDLETS_PASS:
                pass
            elif name in self.functions:
                cur = self.call(name)
            else:
                cur = ANY
        return cur

    def call(self, name):
        if name in self.stack:
            return ANY  # recursion: its own result is merged in by the caller's loop
        self.stack.append(name)
        try:
            fn = self.functions[name]
            body = next(c for c in fn.children if c.type == "script_block")
            return self.block(_script_body(body), typed_params(fn))
        finally:
            self.stack.pop()

    def invoke(self, n, env):
        """$list.Add(x) adds to a list; other method calls: a .NET value we do not follow."""
        kids = _named(n)
        target, member = kids[0], next((c for c in kids if c.type == "member_name"), None)
        mname = member.text.decode().casefold() if member is not None else ""
        if target.type == "variable" and mname == "add":
            args = [c for c in kids if c not in (target, member)]
            arg = args[0] if args else None
            if arg is not None and arg.type == "argument_list":
                inner = _named(arg)
                arg = inner[0] if inner else None
            var = target.text.decode()[1:].casefold()
            env[var] = union(env.get(var), {"t": "list", "of": self.expr(arg, env) if arg is not None else ANY})
            return None
        if mname == "getvalue":
            return REGVALUE
        if mname == "getenumerator":
            base = self.expr(target, env)
            of = base["of"] if base["t"] == "map" else ANY
            return {"t": "list", "of": {"t": "dict", "keys": {"key": SCALAR, "value": of}}}
        if mname in ("tostring", "trimend", "trim", "replace", "split", "join", "toupper", "tolower", "contains"):
            return SCALAR
        return ANY

    def assign(self, n, env):
        kids = [c for c in _named(n) if c.type != "assignement_operator"]
        left, right = _unwrap(kids[0]), kids[-1]
        value = self.value(right, env)
        if left.type == "variable":
            var = left.text.decode()[1:].casefold()
            env[var] = union(env.get(var), value)
        elif left.type == "member_access":
            base, member = _named(left)[0], _named(left)[-1].text.decode()
            if base.type == "variable" and base.text.decode().casefold() == "$ansible":
                if member.casefold() == "result":
                    self.result = union(self.result, value)
                return
            if _is_module_result(base):  # a module of ours: `$module.Result.<key> = ...` (changed is Ansible's)
                if member.casefold() != "changed":
                    self.result = union(self.result, {"t": "dict", "keys": {member: value}})
                return
            self._set_path(base, {"t": "dict", "keys": {member: value}}, env)
        elif left.type == "element_access":
            base = _named(left)[0]
            self._set_path(base, {"t": "map", "of": value}, env)
        # other targets ([ref], casts): not part of a result

    def _set_path(self, base, patch, env):
        base = _unwrap(base)
        if base.type == "variable":
            var = base.text.decode()[1:].casefold()
            env[var] = union(env.get(var), patch)
        elif base.type == "member_access":
            self._set_path(_named(base)[0], {"t": "dict", "keys": {_named(base)[-1].text.decode(): patch}}, env)

    def value(self, n, env):
        """The shape a right-hand side gives to its variable."""
        n = _unwrap(n)
        if n.type in ("if_statement", "foreach_statement", "try_statement", "switch_statement"):
            return self.statement(n, env) or NULL
        if n.type in ("pipeline", "pipeline_chain", "command"):
            return self.pipeline(n, env) or NULL
        return self.expr(n, env)

    def element_of(self, shape):
        if shape is None:
            return ANY
        return shape["of"] if shape["t"] == "list" else (shape if shape["t"] == "dict" else ANY)

    def expr(self, n, env):
        n = _unwrap(n)
        t = n.type
        if t == "hash_literal_expression":
            keys = {}
            for e in _descendants(n):
                if e.type == "hash_entry" and _enclosing_hash(e) == n:
                    key_node, val = _named(e)[0], _named(e)[-1]
                    key = _unwrap(key_node).text.decode().strip("'\"")
                    keys[key] = union(keys.get(key), self.value(val, env))
            return {"t": "dict", "keys": keys}
        if t == "array_expression":
            body = next((c for c in n.children if c.type == "statement_list"), None)
            return {"t": "list", "of": self._elements(body, env) if body is not None else ANY}
        if t == "array_literal_expression":
            of = None
            for c in _named(n):
                of = union(of, self.expr(c, env))
            return {"t": "list", "of": of or ANY}
        if t in ("sub_expression", "parenthesized_expression"):
            body = _named(n)
            if not body:
                return NULL
            return (self.block(body[0], env) if body[0].type == "statement_list" else self.value(body[0], env)) or NULL
        if t == "cast_expression":
            ct = _cast_type(n)
            if ct in ("pscustomobject", "ordered", "hashtable"):
                return self.expr(_named(n)[-1], env)
            if ct in _SCALAR_CASTS or ct == "void":
                return SCALAR
            return ANY
        if t == "variable":
            name = n.text.decode()[1:].casefold()
            if name in ("true", "false"):
                return SCALAR
            if name == "null":
                return NULL
            return env.get(name, ANY)
        if t == "member_access":
            base = self.expr(_named(n)[0], env)
            member = _named(n)[-1].text.decode()
            if base["t"] == "dict":
                return next((v for k, v in base["keys"].items() if k.casefold() == member.casefold()), ANY)
            if base["t"] == "map" and member.casefold() == "values":
                return {"t": "list", "of": base["of"]}
            return ANY
        if t == "element_access":
            base = self.expr(_named(n)[0], env)
            return base["of"] if base["t"] in ("list", "map") else ANY
        if t == "invokation_expression":
            return self.invoke(n, env)
        if t in ("string_literal", "expandable_string_literal", "verbatim_string_characters",
                 "decimal_integer_literal", "hexadecimal_integer_literal", "real_literal", "here_string_literal"):
            return SCALAR
        if t in ("comparison_expression", "logical_expression", "bitwise_expression", "additive_expression",
                 "multiplicative_expression", "format_expression", "unary_expression", "expression_with_unary_operator",
                 "pre_increment_expression", "post_increment_expression"):
            if t == "unary_expression" and n.children and n.children[0].type == ",":
                return {"t": "list", "of": self.expr(n.children[-1], env)}
            return SCALAR
        if t == "range_expression":
            return {"t": "list", "of": SCALAR}
        if t in ("if_statement", "foreach_statement", "pipeline", "pipeline_chain", "command"):
            return self.value(n, env)
        if t == "script_block_expression":
            return ANY
        if t == "type_literal":
            return ANY
        return ANY

    def _elements(self, body, env):
        """The element shape of @( statements ): each statement's outputs, arrays unrolled."""
        of = None
        for s in _named(body):
            u = _unwrap(s)
            out = self.statement(u, env)
            if out is None:
                continue
            if u.type in ("variable", "parenthesized_expression", "sub_expression", "array_expression",
                          "array_literal_expression") and out["t"] == "list":
                out = out["of"]
            of = union(of, out)
        return of or ANY


def _script_body(node):
    for n in _descendants(node):
        if n.type == "statement_list":
            return n
    return node


def _cast_type(n):
    lit = next((c for c in n.children if c.type == "type_literal"), None)
    return re.sub(r"^\[|\]$", "", lit.text.decode()).strip().casefold() if lit is not None else ""


def _enclosing_hash(n):
    p = n.parent
    while p is not None and p.type != "hash_literal_expression":
        p = p.parent
    return p


def _is_module_result(n):
    """True for the node `$module.Result` (Ansible.Basic's result dictionary)."""
    n = _unwrap(n)
    if n.type != "member_access":
        return False
    kids = _named(n)
    return (kids[0].type == "variable" and kids[0].text.decode().casefold() == "$module"
            and kids[-1].text.decode().casefold() == "result")


def is_module(text):
    """True when `text` is a PowerShell module of ours (Ansible.Basic), not a win_powershell script body."""
    return bool(re.search(r"(?im)^#AnsibleRequires\s+-CSharpUtil\s+Ansible\.Basic\b", text))


_OPTION_SHAPES = {"list": {"t": "list", "of": SCALAR}, "dict": ANY}


def module_options(text):
    """{option: {type, elements, default, required, choices}} of the module's `$spec = @{ options = @{...} }`,
    from the tree: each value is the literal text PowerShell would evaluate (`'list'`, `$true`, `@()`)."""
    root = parse(text).root_node
    opts = None
    for e in _descendants(root):
        if e.type == "hash_entry" and _unwrap(_named(e)[0]).text.decode().strip("'\"") == "options":
            val = _unwrap(_named(e)[-1])
            if val.type == "hash_literal_expression":
                opts = val
                break
    if opts is None:
        raise ProbeError("the module has no `options = @{...}` in its argument spec")
    out = {}
    for e in _descendants(opts):
        if e.type == "hash_entry" and _enclosing_hash(e) == opts:
            name = _unwrap(_named(e)[0]).text.decode().strip("'\"")
            inner = _unwrap(_named(e)[-1])
            attrs = {}
            for a in _descendants(inner):
                if a.type == "hash_entry" and _enclosing_hash(a) == inner:
                    attrs[_unwrap(_named(a)[0]).text.decode()] = _unwrap(_named(a)[-1]).text.decode()
            out[name] = {"type": attrs.get("type", "'str'").strip("'\""),
                         "elements": attrs.get("elements", "").strip("'\""),
                         "default": attrs.get("default"), "required": attrs.get("required", "$false") == "$true",
                         "choices": attrs.get("choices")}
    return out


def module_bindings(text):
    """{option: script variable} of the module's `$Var = $module.Params.option` statements."""
    return {m.group(2): m.group(1) for m in re.finditer(r"(?m)^\$(\w+)\s*=\s*\$module\.Params\.(\w+)\s*$", text)}


def result_shape(text):
    """The shape of `$Ansible.Result` of the probe `text`, or of the `$module.Result.<key>` a module of ours sets
    (ProbeError when it is not PowerShell or sets no result)."""
    root = parse(text).root_node
    it = _Interp(root)
    env = {}
    for blk in root.children:
        if blk.type == "param_block":
            env.update(typed_params(blk))
    if is_module(text):
        opts = module_options(text)
        for opt, var in module_bindings(text).items():
            if opt in opts:
                env[var.casefold()] = _OPTION_SHAPES.get(opts[opt]["type"], SCALAR)
    it.block(root, env)
    if it.result is None:
        raise ProbeError("the probe never sets $Ansible.Result (a win_powershell body) nor $module.Result.<key> "
                         "(a module)")
    return it.result


def params(text):
    """Names of the script's param() block, or of a module's options."""
    if is_module(text):
        return list(module_options(text))
    return _param_block(text)


def paths(shape, prefix=()):
    """Every key path of a shape: ('scard', 'readers', '[]', 'name'), ...; '*' for a map's computed key."""
    out = {prefix}
    t = shape["t"]
    if t == "dict":
        for k, v in shape["keys"].items():
            out |= paths(v, (*prefix, k))
    elif t == "map":
        out |= paths(shape["of"], (*prefix, "*"))
    elif t == "list":
        out |= paths(shape["of"], (*prefix, "[]"))
    return out
