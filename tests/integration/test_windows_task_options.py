"""Every ansible.windows / community.windows task of the Windows roles against `ansible-doc --json` of
the installed modules (tests/support/winsim/checker.py): options and literal `choices` values."""
import shutil

import yaml

from tests.support.winsim import ROOT, collection_version
from tests.support.winsim.checker import check, default_dirs, module_calls


def test_every_windows_task_uses_documented_options_and_choices():
    calls = module_calls()
    modules = {c[2] for c in calls}
    # the walk really found the roles' module calls (block/always included)
    assert len(calls) >= 30 and {"ansible.windows.win_regedit", "ansible.windows.win_certificate_store",
                                 "ansible.windows.win_package", "ansible.windows.win_powershell"} <= modules
    assert {d.rsplit("/", 1)[-1] for d in default_dirs()} >= {"windows_trust_store", "windows_uac", "token_middleware"}
    assert collection_version()  # the installed ansible.windows whose docs are used
    assert check(calls) == []


def _copy_role(tmp_path, mutate):
    src = f"{ROOT}/roles/windows_uac"
    dst = tmp_path / "windows_uac"
    shutil.copytree(src, dst)
    main = dst / "tasks" / "main.yml"
    tasks = yaml.safe_load(main.read_text())
    mutate(next(t for t in tasks if "ansible.windows.win_regedit" in t)["ansible.windows.win_regedit"])
    main.write_text(yaml.safe_dump(tasks))
    return [str(dst)]


def test_checker_fails_on_an_invented_option(tmp_path):
    problems = check(module_calls(_copy_role(tmp_path, lambda a: a.update(value_kind="string"))))
    assert len(problems) == 1
    assert "ansible.windows.win_regedit has no option 'value_kind'" in problems[0]
    assert "tasks/main.yml" in problems[0]


def test_checker_fails_on_a_bad_choice(tmp_path):
    problems = check(module_calls(_copy_role(tmp_path, lambda a: a.update(type="dwordd"))))
    assert len(problems) == 1
    assert "option 'type' = 'dwordd' is not one of" in problems[0] and "dword" in problems[0]


def test_rendered_bad_choice_fails_at_run_time_on_the_mock_host(tmp_path):
    # a templated value is checked when the MOCK host receives it, against the same documentation
    from tests.support.winsim import Host  # noqa: PLC0415

    host = Host(tmp_path)
    p = host.play([{"name": "bad type", "ansible.windows.win_regedit": {
        "path": "HKLM:\\SOFTWARE\\x", "name": "v", "data": 1, "type": "{{ 'dwordd' }}"}}])
    assert p.returncode != 0 and "value of type must be one of" in p.stdout
