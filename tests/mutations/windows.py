"""Mutations of the Windows half (issue 28, item 2): each one breaks what a test is meant to guard.

    .venv/bin/python -m tests.mutations.windows            # all: apply, run its tests, restore, report
    .venv/bin/python -m tests.mutations.windows NAME ...   # only these
    .venv/bin/python -m tests.mutations.windows --list

Each mutation is a textual patch of one file of this worktree (the text must occur exactly once), applied in
place and restored in a `finally`, so run it on a clean tree. A mutation is KILLED when the tests named for it
go red with the patch applied; the script also checks they are green without it (a test that is red anyway
proves nothing). Exit status 0 only when every mutation is killed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.path.join(ROOT, ".venv", "bin", "python")

PROBES = "tests/unit/test_windows_probes.py"
MEANING = "tests/integration/test_windows_meaning.py"
ROLES_SIM = "tests/integration/test_windows_roles_sim.py"

# name: (file, old text, new text, [pytest node ids that must go red])
MUTATIONS = {
    "certprop_raw_enums": (
        "library/win_tokentrust_token_probe.ps1",
        '$certprop = if ($cp) { @{ exists = $true; status = "$($cp.Status)"; start_type = "$($cp.StartType)" } }',
        "$certprop = if ($cp) { @{ exists = $true; status = $cp.Status; start_type = $cp.StartType } }",
        [f"{PROBES}::test_every_emitted_leaf_is_a_string_number_or_bool"]),
    "uac_values_as_reg_sz": (
        "roles/windows_uac/tasks/main.yml",
        "    data: \"{{ item.data if item.state == 'present' else omit }}\"\n    type: dword\n",
        "    data: \"{{ item.data if item.state == 'present' else omit }}\"\n    type: string\n",
        [f"{MEANING}::test_uac_values_are_written_and_checked_as_dwords"]),
    "private_dir_keeps_inherited_acl": (
        "library/win_tokentrust_private_dir_create.ps1",
        "$sec.SetAccessRuleProtection($true, $false)",
        "$sec.SetAccessRuleProtection($false, $true)",
        [f"{MEANING}::test_private_dir_create_makes_the_exact_protected_acl"]),
    "private_dir_users_full_control": (
        "library/win_tokentrust_private_dir_create.ps1",
        "[System.Security.Principal.SecurityIdentifier]::new($s), 'ReadAndExecute', $inherit, $none, 'Allow'))",
        "[System.Security.Principal.SecurityIdentifier]::new($s), 'FullControl', $inherit, $none, 'Allow'))",
        [f"{MEANING}::test_private_dir_create_makes_the_exact_protected_acl"]),
    "owner_probe_always_admins": (
        "library/win_tokentrust_private_dir_probe.ps1",
        'owner_sid = "$($sid.Value)"',
        "owner_sid = 'S-1-5-32-544'",
        ["tests/integration/test_windows_roles_sim.py::test_a_folder_planted_by_a_user_stops_the_run"]),
    "card_present_bit_changed": (
        "library/win_tokentrust_token_probe.ps1",
        "present = [bool]($s.EventState -band 0x20)",
        "present = [bool]($s.EventState -band 0x10)",
        [f"{PROBES}::test_probe_constants_are_microsofts_documented_values"]),
    "uninstall_64_bit_view_only": (
        "library/win_tokentrust_uninstall_entries.ps1",
        "foreach ($view in @(@{ name = 'Registry64'; bits = 64 }, @{ name = 'Registry32'; bits = 32 })) {",
        "foreach ($view in @(@{ name = 'Registry64'; bits = 64 })) {",
        [f"{MEANING}::test_a_legacy_product_in_the_32_bit_view_only_is_removed"]),
    "esc_guids_swapped": (
        "library/win_tokentrust_ie_zones_probe.ps1",
        "@{ key = '{A509B1A7-37EF-4b3f-8CFC-4F3A74704073}'; who = 'admins' },\n"
        "                    @{ key = '{A509B1A8-37EF-4b3f-8CFC-4F3A74704073}'; who = 'users' }",
        "@{ key = '{A509B1A8-37EF-4b3f-8CFC-4F3A74704073}'; who = 'admins' },\n"
        "                    @{ key = '{A509B1A7-37EF-4b3f-8CFC-4F3A74704073}'; who = 'users' }",
        [f"{PROBES}::test_probe_constants_are_microsofts_documented_values"]),
    "firefox_gpo_subkeys_not_read": (
        "library/win_tokentrust_firefox_probe.ps1",
        "        $below = Read-Key $sub $(if ($Rel) { \"$Rel\\$s\" } else { $s })\n",
        "        $below = @{}\n",
        ["tests/integration/test_windows_roles_sim.py::test_firefox_with_group_policy_certificates_reports_the_override"]),
    "firefox_paths_not_expanded": (
        "library/win_tokentrust_firefox_probe.ps1",
        "    $p = $Given\n"
        "    if ($ProgramFiles64) { $p = $p -ireplace '%ProgramFiles%', $ProgramFiles64.Replace('$', '$$') }\n"
        "    return [Environment]::ExpandEnvironmentVariables($p)\n",
        "    return $Given\n",
        [f"{ROLES_SIM}::test_firefox_policies_follow_the_hosts_own_program_files"]),
    "firefox_program_files_not_64_bit": (
        "library/win_tokentrust_firefox_probe.ps1",
        "    if ($ProgramFiles64) { $p = $p -ireplace '%ProgramFiles%', $ProgramFiles64.Replace('$', '$$') }\n",
        "",
        [f"{ROLES_SIM}::test_firefox_policies_follow_the_hosts_own_program_files"]),
    "uac_restore_writes_zero": (
        "roles/windows_uac/tasks/main.yml",
        "    data: \"{{ item.data if item.state == 'present' else omit }}\"\n    type: dword\n"
        "    state: \"{{ item.state }}\"\n",
        "    data: \"{{ item.data if item.state == 'present' else 0 }}\"\n    type: dword\n"
        "    state: present\n",
        [f"{MEANING}::test_uac_restore_deletes_the_values_that_were_absent"]),
}


def _pytest(nodes):
    p = subprocess.run([PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *nodes], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    last = (p.stdout.strip().splitlines() or [""])[-1]
    return p.returncode == 0, last


# --baseline: the Windows tests that existed before issue 28 (commit 57ca440), run on each mutation: the unit files
# whole, the integration files limited to the tests about the mutated behaviour (-k), to spare a shared machine.
BASELINE_UNIT = ["tests/unit/test_windows_probes.py", "tests/unit/test_windows_plan.py",
                 "tests/unit/test_windows_filters.py"]
BASELINE_INTEGRATION = ["tests/integration/test_windows_roles_sim.py", "tests/integration/test_windows_french.py"]
BASELINE_K = {
    "certprop_raw_enums": "token or report or french_windows_runs",
    "uac_values_as_reg_sz": "uac or french_windows_runs",
    "private_dir_keeps_inherited_acl": "admin_folder or staging_folders",
    "private_dir_users_full_control": "admin_folder or staging_folders",
    "owner_probe_always_admins": "planted or staging_folders",
    "card_present_bit_changed": "report_has_the_token",
    "uninstall_64_bit_view_only": "uac_window or legacy",
    "esc_guids_swapped": "ie_zone",
    "firefox_gpo_subkeys_not_read": "firefox_with_group",
    "firefox_paths_not_expanded": "hosts_own_program_files",
    "firefox_program_files_not_64_bit": "hosts_own_program_files",
    "uac_restore_writes_zero": "uac_window",
}


def run(name, baseline=False):
    rel, old, new, nodes = MUTATIONS[name]
    if baseline:
        nodes = [*BASELINE_UNIT, *BASELINE_INTEGRATION, "-k", f"test_windows_p or test_windows_f and not french or "
                 f"({BASELINE_K[name]})"]
    path = os.path.join(ROOT, rel)
    with open(path, encoding="utf-8") as f:
        original = f.read()
    if original.count(old) != 1:
        return {"name": name, "verdict": "STALE", "detail": f"the text to mutate occurs {original.count(old)} "
                                                            f"times in {rel}"}
    # (the baseline suite is green on the commit it runs on: not run twice)
    green, why = (True, "") if baseline else _pytest(nodes)
    if not green:
        return {"name": name, "verdict": "RED-WITHOUT-MUTATION", "detail": why}
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original.replace(old, new))
        green_mutated, why = _pytest(nodes)
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original)
    return {"name": name, "verdict": "SURVIVED" if green_mutated else "KILLED", "detail": why, "tests": nodes}


def main(argv):
    if "--list" in argv:
        for n, (rel, _, _, nodes) in MUTATIONS.items():
            print(f"{n:34} {rel}  -> {', '.join(nodes)}")
        return 0
    names = [a for a in argv if not a.startswith("-")] or list(MUTATIONS)
    results = []
    for n in names:
        t = time.monotonic()
        r = run(n, baseline="--baseline" in argv)
        results.append(r)
        print(f"{r['verdict']:22} {n:34} ({time.monotonic() - t:.0f}s) {r['detail']}", flush=True)
    bad = [r for r in results if r["verdict"] != "KILLED"]
    print(f"{len(results) - len(bad)}/{len(results)} killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
