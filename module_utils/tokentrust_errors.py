# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The one exception base of tokentrust, and the one adapter from an exception to ``module.fail_json``.

Every exception the project raises derives from TokentrustError: a stable ``kind`` keyword (matched by tests,
roles and reports), a ``message`` for the admin (what, where), an optional ``hint`` (what to do) and ``details``
(extra result keys). A module turns any of them into its failure with ``fail(module, exc, **result)`` or runs
its body under ``run(module, body)``: ``msg`` is "<module>: <message>[. <hint>]", ``kind`` and the details are
result keys, and no traceback is returned for our own errors. Anything else is a bug and still gets
``exception=`` with its traceback.

Pure Python, no Ansible import at module level: the Windows planning code (loaded by the filter plugins) uses it.
"""
from __future__ import annotations

import traceback


class TokentrustError(Exception):
    """Base of every tokentrust error: ``kind``, ``message``, optional ``hint`` and ``details``."""

    kind = "error"  # the class default; an instance may carry its own

    def __init__(self, kind=None, message="", *, hint=None, **details):
        self.kind = kind or type(self).kind
        self.message = message
        self.hint = hint
        self.details = details
        super().__init__(message)

    def __str__(self):
        return self.message + (". " + self.hint if self.hint else "")

    def to_dict(self):
        """What a module returns for this error: kind, message, the hint when there is one, and the details."""
        out = {"kind": self.kind, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        out.update(self.details)
        return out


def module_name(module):
    """The short name of the running module (``nss_certificate``, also when called by FQCN)."""
    name = getattr(module, "_name", None) or "tokentrust"
    return name.rsplit(".", 1)[-1]


def fail(module, exc, **result):
    """Fail the module with `exc`: ours (TokentrustError) without a traceback, anything else with it.

    `result` holds the keys the module returns on failure (they win over the error's details)."""
    name = module_name(module)
    if isinstance(exc, TokentrustError):
        text = str(exc)
        msg = text if text.startswith(name + ":") else "%s: %s" % (name, text)
        out = dict(exc.details, kind=exc.kind)
        if exc.hint:
            out["hint"] = exc.hint
        out.update(result)
        module.fail_json(msg=msg, **out)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    module.fail_json(msg="%s: unexpected error (a bug: please report it with this traceback): %s: %s"
                     % (name, type(exc).__name__, exc), exception=tb, **result)


def run(module, body, *args, **result):
    """Run body(*args); any exception becomes the module's failure through fail(), with `result` keys."""
    try:
        return body(*args)
    except Exception as exc:  # noqa: BLE001 - fail() tells ours from a bug
        fail(module, exc, **result)


def require(module, import_error, what):
    """The missing-library guard of every module: fail with missing_required_lib(what) and the import traceback
    when `import_error` (the traceback text of a failed import, or None) is set."""
    if import_error:
        from ansible.module_utils.basic import missing_required_lib  # noqa: PLC0415 - only on failure

        module.fail_json(msg=missing_required_lib(what), exception=import_error)


def exit_report(module, rep, fail_on_error=True, problems_label="problems", **extra):
    """End a module whose logic returns a report with its error as data (pkcs11_token_login, pkcs11_pin): the
    report's warnings are warned, and the module fails (with the whole report) when it has an ``error``
    ({kind, message, ...}, see TokentrustError.to_dict) or ``problems``, unless not fail_on_error."""
    for w in rep.pop("warnings", []):
        module.warn(w)
    error, problems = rep.get("error"), rep.get("problems") or []
    if fail_on_error and (error or problems):
        msg = error["message"] if error else "%s: %s" % (problems_label, " | ".join(problems))
        module.fail_json(msg=msg, **dict(extra, **rep))
    module.exit_json(**dict(extra, **rep))
