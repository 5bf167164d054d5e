"""Unit tests: module_utils/tokentrust_policies.py (pure: build, load/validate, merge, remove)."""
import copy
import json

import pytest
from ansible.module_utils.tokentrust_policies import (
    PolicyError,
    desired_policies,
    dump_policies,
    flat_security_devices,
    load_policies,
    merge_policies,
    owned_entries,
    plan_merge,
)

GEM = "/usr/lib/pkcs11/libgclib.so"
CA1 = "/usr/local/share/tokentrust/ca/root.pem"
CA2 = "/usr/local/share/tokentrust/ca/inter.pem"
DESIRED = desired_policies([CA1, CA2], {"gem": GEM}, None)


# ------------------------------------------------------------------ desired_policies
@pytest.mark.parametrize("certs,devices,ier,expected", [
    ([CA1], {"gem": GEM}, None,
     {"Certificates": {"Install": [CA1]}, "SecurityDevices": {"Add": {"gem": GEM}}}),
    ([CA1, CA1, CA2], {}, True,
     {"Certificates": {"Install": [CA1, CA2], "ImportEnterpriseRoots": True}}),
    ([], {}, False, {"Certificates": {"ImportEnterpriseRoots": False}}),
    ([], {}, None, {}),
    ([], {"gem": GEM}, None, {"SecurityDevices": {"Add": {"gem": GEM}}}),
])
def test_desired_policies(certs, devices, ier, expected):
    assert desired_policies(certs, devices, ier) == expected


@pytest.mark.parametrize("certs,devices,ier,msg", [
    ([""], {}, None, "certificate path '' is not a non-empty string"),
    ([3], {}, None, "certificate path 3 is not a non-empty string"),
    ([], {"Add": GEM}, None, "security device name 'Add' is reserved"),
    ([], {"gem": ""}, None, "library path of security device 'gem' is not a non-empty string"),
    ([], {}, "yes", "import_enterprise_roots must be true, false or null, got 'yes'"),
])
def test_desired_policies_bad(certs, devices, ier, msg):
    with pytest.raises(PolicyError, match=msg):
        desired_policies(certs, devices, ier)


def test_owned_entries_is_the_fragment():
    d = desired_policies([CA1], {"gem": GEM}, True)
    assert owned_entries(d) == [
        {"policy": "Certificates", "key": "Install", "value": CA1},
        {"policy": "Certificates", "key": "ImportEnterpriseRoots", "value": True},
        {"policy": "SecurityDevices", "key": "gem", "value": GEM},
    ]


# ------------------------------------------------------------------ load / validate
@pytest.mark.parametrize("data,msg", [
    (b'{"policies": {', "is not valid JSON at line 1 column 15"),
    (b'{"policies": {}}\n,', "is not valid JSON at line 2 column 1: Extra data"),
    (b"\xef\xbb\xbf{}", "byte order mark"),
    (b'{"policies": "\xff"}', "is not valid UTF-8"),
    (b"[]", "top level must be a JSON object, found an array"),
    (b'{"policies": []}', '"policies" must be an object, found an array'),
    (b'{"policies": {"Certificates": {"Install": "x.pem"}}}', "Certificates.Install\" must be a list of strings"),
    (b'{"policies": {"Certificates": {"ImportEnterpriseRoots": 1}}}', "must be true or false"),
    (b'{"policies": {"SecurityDevices": []}}', '"policies.SecurityDevices" must be an object'),
    (b'{"policies": {"SecurityDevices": {"Add": {"gem": 1}}}}', "SecurityDevices.Add\" must be an object of name"),
    (b'{"policies": {"SecurityDevices": {"Delete": "gem"}}}', "SecurityDevices.Delete\" must be a list"),
    (b'{"policies": {"SecurityDevices": {"gem": {}}}}', "SecurityDevices.gem\" (deprecated flat form)"),
])
def test_load_malformed(data, msg):
    with pytest.raises(PolicyError) as ei:
        load_policies(data, "/etc/firefox/policies/policies.json")
    assert msg in str(ei.value)
    assert str(ei.value).startswith("/etc/firefox/policies/policies.json: ")


@pytest.mark.parametrize("data,doc", [
    (b"", {}),
    (b"  \n", {}),
    (b"{}", {}),
    ('{"policies": {"DisableTelemetry": true, "Homepage": {"URL": "https://é.example"}}}'.encode(),
     {"policies": {"DisableTelemetry": True, "Homepage": {"URL": "https://é.example"}}}),
])
def test_load_ok(data, doc):
    assert load_policies(data) == doc


def test_dump_is_utf8_json_with_newline():
    text = dump_policies({"policies": {"Homepage": {"URL": "https://é.example"}}})
    assert "é" in text and text.endswith("}\n")
    assert json.loads(text) == {"policies": {"Homepage": {"URL": "https://é.example"}}}


# ------------------------------------------------------------------ merge present
OTHER = {"policies": {
    "DisableTelemetry": True,
    "Certificates": {"Install": ["/etc/other/ca.pem"], "ImportEnterpriseRoots": False},
    "SecurityDevices": {"Add": {"opensc": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"}},
}}


@pytest.mark.parametrize("existing,expected", [
    (None, {"policies": {"Certificates": {"Install": [CA1, CA2]}, "SecurityDevices": {"Add": {"gem": GEM}}}}),
    ({}, {"policies": {"Certificates": {"Install": [CA1, CA2]}, "SecurityDevices": {"Add": {"gem": GEM}}}}),
    (OTHER, {"policies": {
        "DisableTelemetry": True,
        "Certificates": {"Install": ["/etc/other/ca.pem", CA1, CA2], "ImportEnterpriseRoots": False},
        "SecurityDevices": {"Add": {"opensc": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "gem": GEM}},
    }}),
    # one of ours already there: not duplicated
    ({"policies": {"Certificates": {"Install": [CA2]}}},
     {"policies": {"Certificates": {"Install": [CA2, CA1]}, "SecurityDevices": {"Add": {"gem": GEM}}}}),
    # "gem" pointing to an old library: corrected
    ({"policies": {"SecurityDevices": {"Add": {"gem": "/old/libgclib.so"}}}},
     {"policies": {"Certificates": {"Install": [CA1, CA2]}, "SecurityDevices": {"Add": {"gem": GEM}}}}),
    # Delete list kept
    ({"policies": {"SecurityDevices": {"Delete": ["old"]}}},
     {"policies": {"SecurityDevices": {"Delete": ["old"], "Add": {"gem": GEM}},
                   "Certificates": {"Install": [CA1, CA2]}}}),
])
def test_merge_present(existing, expected):
    before = copy.deepcopy(existing)
    assert merge_policies(existing, DESIRED, "present") == expected
    assert existing == before, "input must not be mutated"


def test_merge_present_idempotent():
    once = plan_merge(OTHER, DESIRED, "present")
    assert once.changed and len(once.added) == 3
    twice = plan_merge(once.doc, DESIRED, "present")
    assert not twice.changed and twice.doc == once.doc and len(twice.unchanged) == 3


def test_merge_flat_form_kept_and_reported():
    existing = {"policies": {"SecurityDevices": {"opensc": "/usr/lib/opensc-pkcs11.so"}}}
    res = plan_merge(existing, DESIRED, "present")
    sd = res.doc["policies"]["SecurityDevices"]
    # no "Add" key: it would make Firefox ignore the flat entries
    assert sd == {"opensc": "/usr/lib/opensc-pkcs11.so", "gem": GEM}
    assert any("deprecated flat form (opensc)" in w for w in res.warnings)
    assert flat_security_devices(res.doc) == sd
    again = plan_merge(res.doc, DESIRED, "present")
    assert not again.changed


def test_merge_flat_form_same_path_not_duplicated():
    existing = {"policies": {"SecurityDevices": {"Gemalto": GEM}}}
    res = plan_merge(existing, desired_policies([], {"gem": GEM}, None), "present")
    assert not res.changed
    assert res.doc == existing
    assert any("already registered as Gemalto" in w for w in res.warnings)


def test_merge_same_path_other_name_in_add_not_duplicated():
    existing = {"policies": {"SecurityDevices": {"Add": {"Classic Client": GEM}}}}
    res = plan_merge(existing, desired_policies([], {"gem": GEM}, None), "present")
    assert not res.changed and res.doc == existing
    assert res.unchanged[0]["note"] == "library already registered as Classic Client"


def test_merge_mixed_forms_warns():
    existing = {"policies": {"SecurityDevices": {"opensc": "/x.so", "Add": {}}}}
    res = plan_merge(existing, desired_policies([], {"gem": GEM}, None), "present")
    assert res.doc["policies"]["SecurityDevices"] == {"opensc": "/x.so", "Add": {"gem": GEM}}
    assert any("Firefox ignores the flat entries" in w for w in res.warnings)


@pytest.mark.parametrize("have,want,changed", [(None, True, True), (False, True, True), (True, True, False)])
def test_merge_import_enterprise_roots(have, want, changed):
    existing = {"policies": {"Certificates": {} if have is None else {"ImportEnterpriseRoots": have}}}
    res = plan_merge(existing, desired_policies([], {}, want), "present")
    assert res.changed is changed
    assert res.doc["policies"]["Certificates"]["ImportEnterpriseRoots"] is want


# ------------------------------------------------------------------ merge absent
@pytest.mark.parametrize("existing,expected", [
    # only ours: containers we filled are pruned
    ({"policies": {"Certificates": {"Install": [CA1, CA2]}, "SecurityDevices": {"Add": {"gem": GEM}}}},
     {"policies": {}}),
    # others kept, other entries of the same list/dict kept
    ({"policies": {
        "DisableTelemetry": True,
        "Certificates": {"Install": ["/etc/other/ca.pem", CA1, CA2], "ImportEnterpriseRoots": False},
        "SecurityDevices": {"Add": {"opensc": "/o.so", "gem": GEM}}}},
     {"policies": {
         "DisableTelemetry": True,
         "Certificates": {"Install": ["/etc/other/ca.pem"], "ImportEnterpriseRoots": False},
         "SecurityDevices": {"Add": {"opensc": "/o.so"}}}}),
    # "gem" pointing elsewhere is not ours: kept
    ({"policies": {"SecurityDevices": {"Add": {"gem": "/other/gem.so"}}}},
     {"policies": {"SecurityDevices": {"Add": {"gem": "/other/gem.so"}}}}),
    # flat-form entry of ours removed, others kept
    ({"policies": {"SecurityDevices": {"gem": GEM, "opensc": "/o.so"}}},
     {"policies": {"SecurityDevices": {"opensc": "/o.so"}}}),
    # empty containers that were already there (not emptied by us) are kept
    ({"policies": {"Certificates": {"Install": []}, "SecurityDevices": {"Add": {}}}},
     {"policies": {"Certificates": {"Install": []}, "SecurityDevices": {"Add": {}}}}),
    (None, {}),
    ({"policies": {}}, {"policies": {}}),
])
def test_merge_absent(existing, expected):
    assert merge_policies(existing, DESIRED, "absent") == expected


def test_present_then_absent_round_trip():
    added = merge_policies(OTHER, DESIRED, "present")
    assert merge_policies(added, DESIRED, "absent") == OTHER
    res = plan_merge(OTHER, DESIRED, "absent")
    assert not res.changed and res.doc == OTHER


def test_absent_keeps_import_enterprise_roots_of_others():
    d = desired_policies([], {}, True)
    res = plan_merge({"policies": {"Certificates": {"ImportEnterpriseRoots": False}}}, d, "absent")
    assert not res.changed
    assert res.unchanged[0]["note"].startswith("not ours")


def test_bad_state():
    with pytest.raises(PolicyError, match="state must be present or absent"):
        plan_merge({}, DESIRED, "latest")
