# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The smart-card middleware of a Debian/Ubuntu host in one look and, only when something is missing, one act.

`read_state()` reads, without changing anything: the dpkg status of the needed and legacy packages, whether the
installed pcscd is built with polkit (``pcscd --version`` lists it under "Enabled features"), the polkit rule's
content, pcscd's socket/service state (systemd, or a running pcscd elsewhere), the system bus (polkit answers pcscd
over it) and the PKCS#11 library's path. `plan()` compares it with what is wanted; `apply()` does only what the plan
lists (apt-get with a dpkg lock wait, the rule written atomically, pcscd started); `check_access()` then proves that
pcscd answers root and every key holder (PC/SC through libpcsclite, in a child that dropped to the holder, and
SCardConnect on each reader holding a card: polkit's ``access_pcsc`` and ``access_card``).

Package names are the same on Debian 12 and 13 for what is installed here (pcscd, libccid, opensc, opensc-pkcs11);
Debian 13's pcscd (pcsc-lite 2.3) also Depends on polkitd, which apt brings in by itself.

apt is driven through ``apt-get`` (run_command), not python3-apt: no prerequisite on the host (python3-apt is
not in a minimal Debian), one process per step, ``DPkg::Lock::Timeout`` to wait for another run or the user's
package manager, and the other run's effect re-read under our own lock before deciding (two runs at once: the
second finds everything in place and reports no change).
"""
from __future__ import annotations

import ctypes
import os
import platform
import pwd
import re
import time

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_files import LockError, lock_file

PACKAGES = ("pcscd", "libccid", "opensc", "opensc-pkcs11")
LEGACY = ("openct", "coolkey", "libgclib")
POLKIT_RULE = "/etc/polkit-1/rules.d/60-tokentrust-pcscd.rules"
# Our lock lives in a directory only root can enter (never /run/lock, mode 1777: any user could hold a lock or
# plant a link there and stall or break the role).
LOCK_DIR = "/run/tokentrust"
LOCK = LOCK_DIR + "/pcsc-middleware.lock"
PCSC_SOCKET = "/run/pcscd/pcscd.comm"
SYSTEM_BUS = "/run/dbus/system_bus_socket"
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "armv7l": "arm-linux-gnueabihf",
             "i386": "i386-linux-gnu", "i686": "i386-linux-gnu", "ppc64le": "powerpc64le-linux-gnu",
             "s390x": "s390x-linux-gnu"}
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C", "APT_LISTCHANGES_FRONTEND": "none"}
# pcsc-lite's return codes (winscard.h) that the check can meet, for messages
PCSC_CODES = {
    0x00000000: "SCARD_S_SUCCESS", 0x80100001: "SCARD_F_INTERNAL_ERROR", 0x80100003: "SCARD_E_INVALID_HANDLE",
    0x80100009: "SCARD_E_UNKNOWN_READER", 0x8010000A: "SCARD_E_TIMEOUT", 0x8010000B: "SCARD_E_SHARING_VIOLATION",
    0x8010000C: "SCARD_E_NO_SMARTCARD", 0x8010000F: "SCARD_E_PROTO_MISMATCH", 0x80100017: "SCARD_E_READER_UNAVAILABLE",
    0x8010001D: "SCARD_E_NO_SERVICE", 0x8010001E: "SCARD_E_SERVICE_STOPPED", 0x80100013: "SCARD_F_COMM_ERROR",
    0x8010002E: "SCARD_E_NO_READERS_AVAILABLE", 0x80100066: "SCARD_W_UNRESPONSIVE_CARD",
    0x80100067: "SCARD_W_UNPOWERED_CARD", 0x80100068: "SCARD_W_RESET_CARD", 0x80100069: "SCARD_W_REMOVED_CARD",
    0x8010006A: "SCARD_W_SECURITY_VIOLATION",
}
POLKIT_HINT = ("pcsc-lite built with polkit (Debian 13) refuses a client outside an active local session unless a "
               "polkit rule allows it: pcscd logs \"Process N (user: U) is NOT authorized for action: access_pcsc\"")


class MiddlewareError(TokentrustError):
    kind = "middleware"


# ------------------------------------------------------------------------------------------------------ reading


def os_release(path="/etc/os-release"):
    out = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                k, sep, v = line.strip().partition("=")
                if sep:
                    out[k] = v.strip().strip('"')
    except OSError:
        pass
    return out


def is_debian_family(release):
    words = set((release.get("ID", "") + " " + release.get("ID_LIKE", "")).lower().split())
    return platform.system() == "Linux" and bool({"debian", "ubuntu"} & words)


def default_library(machine=None):
    """Where Debian's opensc-pkcs11 puts the library on this architecture (multiarch)."""
    triplet = MULTIARCH.get(machine or platform.machine(), "x86_64-linux-gnu")
    return "/usr/lib/%s/opensc-pkcs11.so" % triplet


def dpkg_status(run, names):
    """{name: version} of the packages of `names` that are installed (dpkg's "install ok installed")."""
    if not names:
        return {}
    rc, out, err = run(["dpkg-query", "-W", "-f=${Package}\t${Status}\t${Version}\n", *names])
    if rc not in (0, 1):
        raise MiddlewareError("dpkg_failed", "dpkg-query failed (rc %d): %s" % (rc, (err or out).strip()[-500:]))
    found = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].split()[-1:] == ["installed"] and parts[1].startswith("install "):
            found[parts[0].split(":")[0]] = parts[2]
    return found


def pcscd_features(run):
    """(version, polkit: bool) of the installed pcscd, (None, False) when there is none."""
    if not os.path.exists("/usr/sbin/pcscd"):
        return None, False
    rc, out, err = run(["/usr/sbin/pcscd", "--version"])
    text = out + err
    m = re.search(r"pcsc-lite version ([\w.~+-]+)", text)
    feats = re.search(r"Enabled features:(.*)", text)
    return (m.group(1).rstrip(".") if m else None), bool(feats and "polkit" in feats.group(1).split())


def read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def is_systemd():
    return os.path.isdir("/run/systemd/system")


def _pid_alive(pidfile):
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def pcscd_running_process():
    """A pcscd process of this host's mount namespace is running (its socket exists and its pid file is alive, or
    some process named pcscd runs)."""
    if os.path.exists(PCSC_SOCKET) and _pid_alive("/run/pcscd/pcscd.pid"):
        return True
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/comm" % d) as f:
                    if f.read().strip() == "pcscd":
                        return os.path.exists(PCSC_SOCKET)
            except OSError:
                continue
    return False


def bus_up(path=SYSTEM_BUS):
    """The system bus answers on its socket (a stale socket file left by a stopped dbus does not count)."""
    import socket  # noqa: PLC0415 - only here

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def service_state(run):
    """{manager, socket_enabled, socket_active, running}: pcscd.socket under systemd, a running pcscd elsewhere."""
    if is_systemd():
        out_e = run(["systemctl", "is-enabled", "pcscd.socket"])[1]
        out_a = run(["systemctl", "is-active", "pcscd.socket"])[1]
        return {"manager": "systemd", "socket_enabled": out_e.strip() in ("enabled", "static", "enabled-runtime"),
                "socket_active": out_a.strip() == "active", "running": out_a.strip() == "active"}
    return {"manager": "sysv", "running": pcscd_running_process(), "system_bus": bus_up()}


def read_state(run, packages, legacy, rule_path, library):
    wanted = list(dict.fromkeys(list(packages) + list(legacy) + ["polkitd", "dbus"]))
    installed = dpkg_status(run, wanted)
    version, polkit = pcscd_features(run)
    return {"installed": installed, "pcscd_version": version, "pcscd_polkit": polkit,
            "rule": read_file(rule_path), "service": service_state(run) if "pcscd" in installed else None,
            "library_exists": os.path.isfile(library)}


# ------------------------------------------------------------------------------------------------------ planning


def rule_text(users, groups, root):
    """The polkit rule: pcscd's two actions, for the listed users, members of the listed groups, and root."""
    who = list(users) + (["root"] if root else [])
    return "\n".join([
        "// Written by tokentrust (token_middleware_linux / pcsc_middleware): do not edit, it is rewritten.",
        "// pcsc-lite built with polkit (Debian 13) refuses clients outside an active local session; this allows the",
        "// key holders (their own sessions: SSH, remote desktop, no logind session)%s." % (
            " and root (the test login runs as root over SSH with become)" if root else ""),
        "polkit.addRule(function(action, subject) {",
        '    if (action.id != "org.debian.pcsc-lite.access_pcsc" && action.id != "org.debian.pcsc-lite.access_card") {',
        "        return polkit.Result.NOT_HANDLED;",
        "    }",
        "    var users = %s;" % _js_list(who),
        "    var groups = %s;" % _js_list(groups),
        "    if (users.indexOf(subject.user) >= 0) {",
        "        return polkit.Result.YES;",
        "    }",
        "    for (var i = 0; i < groups.length; i++) {",
        "        if (subject.isInGroup(groups[i])) {",
        "            return polkit.Result.YES;",
        "        }",
        "    }",
        "    return polkit.Result.NOT_HANDLED;",
        "});",
        "",
    ])


def check_names(items, what="user or group"):
    """Refuse a name that cannot be a user or group name (before anything is written): control characters (a
    newline would break the polkit rule's JavaScript), quotes, spaces."""
    for i in items:
        if not isinstance(i, str) or re.search(r"[\x00-\x1f\x7f]", i):
            raise MiddlewareError("bad_name", "%r is not a %s name: it holds a control character (a newline, a tab...);"
                                  " nothing was written" % (i, what))
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*", i):
            raise MiddlewareError("bad_name", "%r is not a %s name (letters, digits, _ . @ -); nothing was written"
                                  % (i, what))


def _js_list(items):
    check_names(items)
    return "[" + ", ".join('"%s"' % i for i in items) + "]"


def plan(state, want):
    """What to do: {remove: [...], install: [...], rule: text|None (write)|'' (remove), start_bus, start_pcscd}."""
    installed = state["installed"]
    out = {"remove": [], "install": [], "rule": None, "rule_pending": None, "remove_rule": False, "start_bus": False,
           "start_pcscd": False, "enable_socket": False}
    if want["state"] == "absent":
        out["remove"] = [p for p in want["packages"] if p in installed]
        out["remove_rule"] = state["rule"] is not None
        return out
    if want["remove_legacy"]:
        out["remove"] = [p for p in want["legacy"] if p in installed]
    out["install"] = [p for p in want["packages"] if p not in installed]
    # polkit: decided from the installed pcscd; a pcscd still to install is looked at again after the install
    # (apply()), and a check-mode run says "pending"
    if want["users"] or want["groups"] or want["root"]:
        text = rule_text(want["users"], want["groups"], want["root"])
        if state["rule"] != text:
            if state["pcscd_polkit"]:
                out["rule"] = text
            elif "pcscd" in out["install"]:
                out["rule_pending"] = text
    svc = state["service"]
    if svc is None:
        out["start_pcscd"] = True
    elif svc["manager"] == "systemd":
        out["enable_socket"] = not svc["socket_enabled"]
        out["start_pcscd"] = not svc["socket_active"]
    else:
        out["start_pcscd"] = not svc["running"]
        out["start_bus"] = state["pcscd_polkit"] and not svc["system_bus"]
    return out


def nothing_to_do(p):
    return not (p["remove"] or p["install"] or p["rule"] or p["remove_rule"] or p["start_bus"] or p["start_pcscd"]
                or p["enable_socket"])


# ------------------------------------------------------------------------------------------------------ acting


class Lock:
    """Our own lock (flock) around read-decide-act: a second run at once waits, then re-reads what the first did.

    In LOCK_DIR (made 0700, refused unless root's and writable by nobody else), the file made O_NOFOLLOW 0600; the
    wait bounded by `timeout` (0 or more), the error naming who holds it."""

    def __init__(self, path=LOCK, timeout=300):
        if timeout is None or timeout < 0:
            raise MiddlewareError("bad_option", "lock_timeout must be 0 or more seconds, not %r" % (timeout,))
        self.path, self.timeout = path, timeout
        self._lock = lock_file(os.path.dirname(path), os.path.basename(path), timeout, what="middleware lock")

    def __enter__(self):
        try:
            self._lock.__enter__()
        except LockError as e:
            raise MiddlewareError("lock_timeout" if "was held" in e.message else "lock", e.message,
                                  hint=e.hint) from e
        return self

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


def apt_candidates(run, names):
    """The packages of `names` that apt has no candidate for (no package source names them)."""
    rc, out, err = run(["apt-cache", "policy", *names])
    missing = []
    for name in names:
        m = re.search(r"^%s:\n(?:\s+.*\n)*?\s+Candidate: (\S+)" % re.escape(name), out + "\n", re.M)
        if not m or m.group(1) == "(none)":
            missing.append(name)
    return missing


def _apt(run, args, lock_timeout):
    return run(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=%d" % lock_timeout,
                "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", *args],
               env=APT_ENV)


def _last_lines(text, n=3):
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:])


def install(run, names, lock_timeout, log):
    """apt-get install, the package lists updated first when apt has no candidate (and once more when a download
    fails on stale lists). No package source: a specific error, nothing changed."""
    missing = apt_candidates(run, names)
    if missing:
        rc, out, err = _apt(run, ["update"], lock_timeout)
        log.append("apt-get update (no candidate for %s): rc %d" % (", ".join(missing), rc))
        missing = apt_candidates(run, names)
        if missing:
            raise MiddlewareError(
                "no_package_source",
                "apt has no package source for %s (apt-cache policy: Candidate (none); apt-get update: %s). Nothing "
                "was changed on this host" % (", ".join(missing), _last_lines(err or out, 2) or "rc %d" % rc),
                hint="Give it a working package source (apt sources and `apt-get update`), or install %s by hand, "
                     "then run again" % " ".join(names), missing=missing)
    args = ["install", "--no-install-recommends", *names]
    rc, out, err = _apt(run, args, lock_timeout)
    if rc != 0 and re.search(r"Failed to fetch|Unable to fetch|404", out + err):
        _apt(run, ["update"], lock_timeout)
        rc, out, err = _apt(run, args, lock_timeout)
    if rc != 0:
        raise MiddlewareError("apt_failed", "apt-get install %s failed (rc %d): %s" % (
            " ".join(names), rc, _last_lines(err or out)), hint="Run it by hand on the host to see why")
    log.append("apt-get install %s" % " ".join(names))


def remove(run, names, lock_timeout, log):
    rc, out, err = _apt(run, ["remove", *names], lock_timeout)
    if rc != 0:
        raise MiddlewareError("apt_failed", "apt-get remove %s failed (rc %d): %s" % (
            " ".join(names), rc, _last_lines(err or out)))
    log.append("apt-get remove %s" % " ".join(names))


def start_bus(run, log):
    """No systemd: pcscd asks polkit over the system bus; start dbus (polkitd is bus-activated)."""
    if bus_up():
        return
    rc, out, err = run(["service", "dbus", "start"])
    if rc != 0 or not _wait(bus_up, 10):
        raise MiddlewareError("bus_failed", "pcscd is built with polkit and needs the system bus; `service dbus "
                              "start` failed (rc %d): %s" % (rc, _last_lines(err or out)))
    log.append("service dbus start (pcscd asks polkit over the system bus)")


def start_pcscd(run, log, enable_socket, restart=False):
    """Start pcscd (restart: a pcscd that ran while the system bus was down; measured on Debian 13, such a pcscd keeps
    a socket but answers no client, SCARD_E_NO_SERVICE, even after the bus is back)."""
    if restart and not is_systemd():
        what = "service pcscd restart"
        rc, out, err = run(["service", "pcscd", "restart"])
        if rc != 0 or not _wait(pcscd_running_process, 10):
            raise MiddlewareError("pcscd_failed", "`%s` failed (rc %d): %s" % (what, rc, _last_lines(err or out)))
        log.append(what + " (it ran without the system bus)")
        return
    if is_systemd():
        args = ["systemctl", "enable", "--now", "pcscd.socket"] if enable_socket else \
            ["systemctl", "start", "pcscd.socket"]
        rc, out, err = run(args)
        what = " ".join(args)
        ok = rc == 0
    else:
        what = "service pcscd start"
        rc, out, err = run(["service", "pcscd", "start"])
        ok = rc == 0 and _wait(pcscd_running_process, 10)
    if not ok:
        raise MiddlewareError("pcscd_failed", "`%s` failed (rc %d): %s" % (what, rc, _last_lines(err or out)))
    log.append(what)


def _wait(cond, seconds):
    end = time.monotonic() + seconds
    while True:
        if cond():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------------ checking


def pcsc_probe():
    """As whoever runs it: pcscd's answer through libpcsclite. {ok, establish, readers: [{name, connect}]}."""
    try:
        lib = ctypes.CDLL("libpcsclite.so.1")
    except OSError as e:
        return {"ok": False, "establish": None, "error": "libpcsclite.so.1 cannot be loaded: %s" % e, "readers": []}
    lib.SCardEstablishContext.restype = ctypes.c_long
    lib.SCardListReaders.restype = ctypes.c_long
    lib.SCardConnect.restype = ctypes.c_long
    ctx = ctypes.c_long()
    rv = lib.SCardEstablishContext(ctypes.c_ulong(2), None, None, ctypes.byref(ctx)) & 0xFFFFFFFF
    if rv != 0:
        return {"ok": False, "establish": code_name(rv), "readers": [],
                "error": "SCardEstablishContext: %s" % code_name(rv)}
    try:
        size = ctypes.c_ulong(0)
        rv = lib.SCardListReaders(ctx, None, None, ctypes.byref(size)) & 0xFFFFFFFF
        names = []
        if rv == 0 and size.value:
            buf = ctypes.create_string_buffer(size.value)
            rv = lib.SCardListReaders(ctx, None, buf, ctypes.byref(size)) & 0xFFFFFFFF
            names = [n.decode("utf-8", "replace") for n in buf.raw[:size.value].split(b"\0") if n]
        if rv not in (0, 0x8010002E):
            return {"ok": False, "establish": "SCARD_S_SUCCESS", "readers": [],
                    "error": "SCardListReaders: %s" % code_name(rv)}
        readers = []
        for name in names:
            card = ctypes.c_long()
            proto = ctypes.c_ulong()
            rv = lib.SCardConnect(ctx, name.encode(), ctypes.c_ulong(2), ctypes.c_ulong(3), ctypes.byref(card),
                                  ctypes.byref(proto)) & 0xFFFFFFFF
            if rv == 0:
                lib.SCardDisconnect(card, ctypes.c_ulong(0))
            readers.append({"name": name, "connect": code_name(rv),
                            "card": rv == 0, "refused": rv == 0x8010006A})
        refused = [r["name"] for r in readers if r["refused"]]
        out = {"ok": not refused, "establish": "SCARD_S_SUCCESS", "readers": readers}
        if refused:
            out["error"] = "SCardConnect: SCARD_W_SECURITY_VIOLATION on %s" % ", ".join(refused)
        return out
    finally:
        lib.SCardReleaseContext(ctx)


def code_name(rv):
    return "%s (0x%08X)" % (PCSC_CODES.get(rv, "unknown"), rv)


def check_access(users, run_as, owner_of):
    """pcsc_probe() as root and as each user of `users`, each in a child with a deadline. {who: probe result}."""
    out = {}
    for who in ["root"] + [u for u in users if u != "root"]:
        try:
            pw = pwd.getpwnam(who)
        except KeyError:
            out[who] = {"ok": False, "error": "no such user on this host", "readers": []}
            continue
        try:
            out[who] = run_as(owner_of(pw.pw_uid, pw.pw_gid), pcsc_probe, deadline=30)
        except TokentrustError as e:
            out[who] = {"ok": False, "error": str(e), "readers": []}
    return out


def access_problem(results, polkit):
    """None when every probe passed, else the message."""
    bad = {who: r for who, r in results.items() if not r.get("ok")}
    if not bad:
        return None
    text = "; ".join("%s: %s" % (who, r.get("error")) for who, r in bad.items())
    hint = POLKIT_HINT if polkit else "pcscd must be running and answer on %s" % PCSC_SOCKET
    return "pcscd does not let %s use the smart cards (%s). %s" % (", ".join(bad), text, hint)
