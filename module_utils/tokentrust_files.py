# -*- coding: utf-8 -*-
# Copyright: tokentrust contributors. GNU General Public License v3.0+
"""The one atomic write of the modules that write files on the host (firefox_policies, ca_bundle, fleet_report).

write_file(): nothing is written when the content is the same; otherwise a temporary file in the same directory
gets the data, is flushed to disk (fsync) and renamed over the target by AnsibleModule.atomic_move (an existing
file keeps its mode, owner and SELinux context; O(unsafe_writes) honoured), then the directory is synced. The
file attributes of add_file_common_args (mode, owner, group, seuser, serole, setype, selevel, attributes) are
then applied with AnsibleModule.set_fs_attributes_if_different, in check mode too (it only reports), with their
before/after in the diff. A module without those options, or a file with its own owner (firefox_policies'
certificate files), passes `attributes` explicitly.

The NSS database restore (tokentrust_nss/database.py) keeps its own write: it runs in a child that has dropped to
the profile owner, without an AnsibleModule, and must never follow a link planted in a user's profile
(O_EXCL | O_NOFOLLOW on the temporary file, os.replace), which atomic_move does not promise.
"""
from __future__ import annotations

import os
import tempfile

from ansible.module_utils.tokentrust_errors import TokentrustError

FILE_ARGS = ("mode", "owner", "group", "seuser", "serole", "setype", "selevel", "attributes")


class WriteError(TokentrustError):
    """A file could not be written (the message names it and the reason): nothing else was changed after it."""

    def __init__(self, path, exc, hint=None):
        super().__init__("write", "cannot write %s: %s" % (path, getattr(exc, "strerror", None) or exc), hint=hint,
                         path=path)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_args(module, path, attributes=None, default_mode=None):
    """The file attributes to apply to `path`: `attributes` (a dict of FILE_ARGS) when given, else the module's
    common file options (add_file_common_args); `default_mode` (e.g. 0o644) when no mode is asked for. None values
    mean "leave as it is"."""
    params = module.params if attributes is None else dict(attributes)
    args = module.load_file_common_arguments({k: params.get(k) for k in FILE_ARGS}, path=path)
    args["unsafe_writes"] = bool(module.params.get("unsafe_writes"))
    if args.get("mode") is None and default_mode is not None:
        args["mode"] = default_mode
    return args


def write_file(module, path, data, attributes=None, default_mode=0o644, backup=False, create_dir_mode=0o755):
    """Write `data` (bytes or text, UTF-8) to `path` unless it already holds it; apply the file attributes.

    Returns a dict: changed (content or attributes, or would be in check mode), content_changed, backup_file
    (when `backup` and an existing file was replaced), attributes_diff ({"before": {...}, "after": {...}}: what
    set_fs_attributes_if_different changed). `default_mode` is the mode of a new file when no mode is asked for;
    an existing file keeps its own.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    current = _read(path)
    existed = current is not None
    out = {"changed": current != data, "content_changed": current != data, "backup_file": None,
           "attributes_diff": {"before": {}, "after": {}}}
    args = file_args(module, path, attributes, default_mode=None if existed else default_mode)
    if out["content_changed"] and not module.check_mode:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, create_dir_mode)
        if backup and existed:
            out["backup_file"] = module.backup_local(path)
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if not existed and default_mode is not None:
                os.chmod(tmp, default_mode)
            module.atomic_move(tmp, path, unsafe_writes=bool(args.get("unsafe_writes")))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _fsync_dir(directory)
    if os.path.exists(path):  # not yet in check mode for a new file: nothing to compare, `changed` is set already
        out["changed"] = module.set_fs_attributes_if_different(args, out["changed"], diff=out["attributes_diff"])
    return out


def set_attributes(module, path, attributes=None):
    """The file attributes only, on an existing file whose content is left alone; same result as write_file."""
    out = {"changed": False, "content_changed": False, "backup_file": None,
           "attributes_diff": {"before": {}, "after": {}}}
    if os.path.exists(path):
        out["changed"] = module.set_fs_attributes_if_different(file_args(module, path, attributes), False,
                                                               diff=out["attributes_diff"])
    return out


def with_attributes_diff(diff, writes):
    """The module's diff, plus one entry per written file whose attributes changed (the diff becomes a list then);
    `writes` are (path, write_file result) pairs."""
    extra = [{"before_header": "%s (attributes)" % path, "after_header": "%s (attributes)" % path,
              "before": w["attributes_diff"]["before"], "after": w["attributes_diff"]["after"]}
             for path, w in writes if w["attributes_diff"]["before"] or w["attributes_diff"]["after"]]
    if not extra:
        return diff
    return ([diff] if isinstance(diff, dict) else list(diff or [])) + extra
