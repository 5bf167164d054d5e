# Copyright: tokentrust contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller-side fleet state: when each host was last attempted, seen, found unreachable and converged.

Pure Python, no Ansible import. Written by the callback plugin `tokentrust_state` (callback_plugins/) while a
playbook runs, and by module `fleet_report` (converged in pull mode); read by `fleet_report`.

Files in the state directory (default reports/state):

    state.json      {"format": FORMAT, "hosts": {name: {field: value}}}
    not_converged   the hosts whose last converge attempt (site.yml, firefox.yml, windows.yml) did not converge
                    them, one per line: `ansible-playbook ... playbooks/site.yml --limit @reports/state/not_converged`
    .lock           flock(2) taken around every read-modify-write (two runs at once both land), created 0600 with
                    O_NOFOLLOW (nobody else can open it, so nobody else can hold it), the wait bounded by
                    LOCK_TIMEOUT seconds, the error naming the holder

The directory must be ours (or root's) and writable by nobody else (tokentrust_files.private_dir): in a group- or
world-writable one another user could plant a link or a lock, so it is refused with a message, nothing written.
Every write is tokentrust_files.write_nofollow (a temp file created O_EXCL | O_NOFOLLOW in the same directory,
fsync'ed, then os.replace()d over the old one): a run killed at any point leaves the previous or the new file,
never a partial one, and no planted link is followed.

Fields per host (times are UTC, ISO 8601 with Z): last_attempt (a converge playbook started on it), last_seen (a
task reached it), last_unreachable and unreachable_msg, last_converged (a converge playbook ended with no failure
and no unreachable on it, in a full run: not --check, no --tags), last_result (converged, failed, unreachable),
last_playbook, pull_converged (the last pull-mode run that converged it, as reported by the host itself).
"""
from __future__ import annotations

import datetime as _dt
import json
import os

from ansible.module_utils.tokentrust_errors import TokentrustError
from ansible.module_utils.tokentrust_files import LockError, lock_file, write_nofollow

FORMAT = "tokentrust-fleet-state/1"
STATE_FILE = "state.json"
RETRY_FILE = "not_converged"
LOCK_FILE = ".lock"
LOCK_TIMEOUT = 60  # seconds: other runs hold the lock for milliseconds (one read-modify-write)
FIELDS = ("last_attempt", "last_seen", "last_unreachable", "unreachable_msg", "last_converged", "last_result",
          "last_playbook", "pull_converged")


class StateError(TokentrustError):
    """The state directory cannot be read or written (the message says which file and what to do)."""

    def __init__(self, message):
        super().__init__("state", message)


def now_stamp(now=None):
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _atomic_write(path, text, mode=0o644):
    write_nofollow(path, text, mode=mode)


def _parse(text, path):
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StateError("%s is not valid JSON (%s): move it away to start a new state; nothing was written"
                         % (path, exc)) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("hosts"), dict):
        raise StateError("%s is not a tokentrust state file (no \"hosts\" object): move it away; nothing was written"
                         % path)
    return doc["hosts"]


def load(state_dir):
    """{host: fields} from <state_dir>/state.json ({} when there is none yet)."""
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    return _parse(text, path)


def is_converged(entry):
    """A host is converged when a run converged it (push or pull) at or after its last converge attempt."""
    done = max(entry.get("last_converged") or "", entry.get("pull_converged") or "")
    if not done:
        return False
    return done >= (entry.get("last_attempt") or "")


def not_converged(hosts):
    """Hosts that a converge playbook attempted and that no run has converged since, sorted."""
    return sorted(h for h, e in hosts.items() if e.get("last_attempt") and not is_converged(e))


def update(state_dir, changes, lock_timeout=None):
    """Merge {host: {field: value}} into the state (under the lock) and rewrite not_converged; returns the hosts.

    A field whose value is None is left as it was; "pull_converged" only ever moves forward in time.
    """
    try:
        lock = lock_file(state_dir, LOCK_FILE, LOCK_TIMEOUT if lock_timeout is None else lock_timeout,
                         what="fleet state lock", create_mode=0o755)
        lock.__enter__()
    except LockError as exc:
        raise StateError("%s (fleet_state_dir)" % exc.message) from exc
    try:
        hosts = load(state_dir)
        for name, fields in changes.items():
            unknown = [k for k in fields if k not in FIELDS]
            if unknown:
                raise StateError("unknown state field(s) %s for host %s (known: %s)"
                                 % (", ".join(unknown), name, ", ".join(FIELDS)))
            entry = hosts.setdefault(name, {})
            for k, v in fields.items():
                if v is None:
                    continue
                if k == "pull_converged" and (entry.get(k) or "") >= v:
                    continue
                entry[k] = v
        try:
            _atomic_write(os.path.join(state_dir, STATE_FILE),
                          json.dumps({"format": FORMAT, "hosts": hosts}, indent=1, sort_keys=True) + "\n")
            _atomic_write(os.path.join(state_dir, RETRY_FILE), "".join(h + "\n" for h in not_converged(hosts)))
        except OSError as exc:
            raise StateError("cannot write the state into %s: %s" % (state_dir, exc.strerror or exc)) from exc
        return hosts
    finally:
        lock.__exit__(None, None, None)  # releases the flock
