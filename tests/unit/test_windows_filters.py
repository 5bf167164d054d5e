"""The filter plugin as Ansible loads it: module_utils found relative to the plugin file, errors as
AnsibleFilterError with the planner's message. The plugin is the one next to the module_utils under test: the
repository's filter_plugins/, or the collection's plugins/filter/ when tests/unit runs on an installed collection
(tests/collection/units_plugin.py)."""
import importlib.util
import os

import pytest
from ansible.errors import AnsibleFilterError
from ansible.module_utils import tokentrust_facts

# repository: <root>/module_utils/ -> <root>/filter_plugins/; collection: plugins/module_utils/ -> plugins/filter/
_TOP = os.path.dirname(os.path.dirname(os.path.abspath(tokentrust_facts.__file__)))
PLUGIN = os.path.join(_TOP, "filter", "tokentrust.py") if os.path.basename(_TOP) == "plugins" \
    else os.path.join(_TOP, "filter_plugins", "tokentrust.py")


@pytest.fixture(scope="module")
def filters():
    spec = importlib.util.spec_from_file_location(
        "tt_win_filters", PLUGIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FilterModule().filters()


def test_all_filters_exposed(filters):
    assert {"tokentrust_win_store_plan", "tokentrust_win_uac_plan", "tokentrust_win_ie_plan",
            "tokentrust_win_firefox_plan", "tokentrust_win_legacy_match", "tokentrust_win_report"} <= set(filters)


def test_error_becomes_filter_error(filters):
    with pytest.raises(AnsibleFilterError, match="windows_uac_mode must be one of"):
        filters["tokentrust_win_uac_plan"]({}, "off", "before")


def test_reg_values_skips_default_and_missing_key(filters):
    res = {"exists": True, "properties": {"": {"raw_value": ""}, "(Default)": {"raw_value": ""},
                                          "AA" * 20: {"raw_value": "Root", "type": "REG_SZ"}}}
    assert filters["tokentrust_win_reg_values"](res) == {"AA" * 20: "Root"}
    assert filters["tokentrust_win_reg_values"]({"exists": False}) == {}


def test_uac_plan_from_reg_stat_properties(filters):
    props = {"EnableLUA": {"raw_value": 1}, "ConsentPromptBehaviorAdmin": {"raw_value": 5},
             "PromptOnSecureDesktop": {"raw_value": 1}}
    plan = filters["tokentrust_win_uac_plan"](props, "disable_for_install", "before")
    assert plan["record_write"] and [e["data"] for e in plan["set"]] == [0, 0, 0]
