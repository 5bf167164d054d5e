"""Pure logic of the token work: PIN rules, PIN states from flags, the guard, certificate checks, page analysis."""
from __future__ import annotations

import datetime as dt

import pytest
from ansible.module_utils.tokentrust_login import (
    check_chain,
    choose_certificate,
    describe_certificate,
    usable_for_login,
)
from ansible.module_utils.tokentrust_nss.tls import TLSError, analyse_page, parse_url
from ansible.module_utils.tokentrust_nss.token import (
    TokenError,
    check_guard,
    pin_state,
)
from ansible.module_utils.tokentrust_pin import bounds, check_new_pin, is_weak, scrub, scrub_all

from lab.pki import certeurope_standin, make_ca, make_leaf


@pytest.mark.parametrize("new, kw, expect", [
    ("58203917", {}, []),
    ("", {}, ["the new PIN is empty"]),
    ("123", {"min_len": 4, "max_len": 8}, ["the new PIN has 3 characters; the token accepts 4 to 8"]),
    ("123456789", {"min_len": 4, "max_len": 8}, ["the new PIN has 9 characters; the token accepts 4 to 8"]),
    ("5820", {"confirm": "5821"}, ["the new PIN and its confirmation differ"]),
    ("58a0", {"charset": "digits"}, ["the new PIN contains 1 character(s) outside the allowed set (digits 0-9)"]),
    ("58a0", {"charset": "alphanumeric"}, []),
    ("58-0", {"charset": "alphanumeric"}, ["the new PIN contains 1 character(s) outside the allowed set "
                                           "(letters A-Z a-z and digits 0-9)"]),
    ("58é0", {"charset": "printable"}, ["the new PIN contains 1 character(s) outside the allowed set "
                                        "(printable ASCII characters (no accents))"]),
    ("5820", {"old": "5820"}, ["the new PIN is the same as the current one"]),
    ("1234", {"reject_weak": True}, ["the new PIN is too easy to guess (repeated or consecutive characters)"]),
    ("1234", {"reject_weak": False}, []),
    ("5820", {"charset": "hex"}, ["unknown PIN character set 'hex' (choose: alphanumeric, digits, printable)"]),
])
def test_check_new_pin(new, kw, expect):
    problems = check_new_pin(new, **kw)
    assert problems == expect
    for p in problems:  # never quotes the PIN
        assert not new or new not in p


@pytest.mark.parametrize("pin, weak", [("0000", True), ("1234", True), ("9876", True), ("abcd", True),
                                       ("1357", False), ("5820", False), ("1", True), ("1233", False)])
def test_is_weak(pin, weak):
    assert is_weak(pin) is weak


@pytest.mark.parametrize("args, expect", [
    ((4, 255, None, None), (4, 16, [])),
    ((4, 8, None, None), (4, 8, [])),
    ((0, 0, None, None), (4, 16, [])),
    ((6, 8, 4, None), (6, 8, ["pin_min_length 4 is below what the token accepts (6)"])),
    ((4, 8, None, 12), (4, 8, ["pin_max_length 12 is above what the token accepts (8)"])),
    ((4, 255, 6, 40), (6, 40, [])),
    ((4, 8, 8, 6), (8, 6, ["no PIN length fits: minimum 8 > maximum 6"])),
])
def test_bounds(args, expect):
    assert bounds(*args) == expect


def test_scrub():
    assert scrub("pin 5820 wrong", ["5820"]) == "pin ******** wrong"
    assert scrub_all({"a": ["x5820", 3], "b": {"c": "5820"}}, ["5820", ""]) == {"a": ["x********", 3],
                                                                              "b": {"c": "********"}}


@pytest.mark.parametrize("flags, who, state", [
    (0x0, "user", "ok"), (0x10000, "user", "count_low"), (0x30000, "user", "final_try"), (0x50000, "user", "locked"),
    (0x50000, "so", "ok"), (0x100000, "so", "count_low"), (0x300000, "so", "final_try"), (0x400000, "so", "locked"),
])
def test_pin_state(flags, who, state):
    assert pin_state(flags, who) == state


def _info(user="ok", so="ok"):
    return {"label": "KEY", "user_pin": user, "so_pin": so}


def test_guard():
    assert check_guard(_info()) == []
    assert "count low" in check_guard(_info("count_low"))[0]
    with pytest.raises(TokenError) as e:
        check_guard(_info("final_try"))
    assert e.value.kind == "pin_final_try" and "no attempt was made" in e.value.message
    assert "presenting it anyway" in check_guard(_info("final_try"), allow_final_try=True)[0]
    for allow in (False, True):
        with pytest.raises(TokenError) as e:
            check_guard(_info("locked"), allow_final_try=allow)
        assert e.value.kind == "pin_locked" and "Unblock it with the PUK" in e.value.message
    with pytest.raises(TokenError) as e:
        check_guard(_info(so="final_try"), "so")
    assert e.value.kind == "puk_final_try"
    with pytest.raises(TokenError) as e:
        check_guard(_info(so="locked"), "so", True)
    assert e.value.kind == "puk_locked" and "cannot be unblocked" in e.value.message


@pytest.fixture(scope="module")
def pki():
    return certeurope_standin()


def _cas(pki, names=None):
    return [(n, i.cert) for n, i in pki.items() if names is None or n in names]


def test_chain_and_description(pki):
    leaf = make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True)
    d = describe_certificate(leaf.der, _cas(pki))
    assert d["in_ca_set"] is True and d["chain"] == ["Lab Advanced CA V3", "Lab Root CA 2"] and d["problem"] is None
    assert d["holder"] == "JEAN DUPONT" and d["client_auth"] is True and not d["expired"]
    assert "digital_signature" in d["key_usage"] and d["days_left"] in (1093, 1094)
    assert usable_for_login(d) is None
    d = describe_certificate(leaf.der, _cas(pki, ["Lab Root CA 2"]))
    assert d["in_ca_set"] is False and "is not in the CA set" in d["problem"]
    assert usable_for_login(d).startswith("does not chain to the CA set")
    d = describe_certificate(leaf.der, _cas(pki, ["Lab Advanced CA V3"]))
    assert d["in_ca_set"] is False and d["chain"] == ["Lab Advanced CA V3"]


def test_chain_forged_issuer(pki):
    leaf = make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True)
    forged = make_ca("Lab Advanced CA V3", issuer=pki["Lab Root CA 2"], org="tokentrust lab (CertEurope stand-in)")
    res = check_chain(leaf.cert, [("forged", forged.cert), ("Lab Root CA 2", pki["Lab Root CA 2"].cert)])
    assert res["in_ca_set"] is False and "did not sign it" in res["problem"]


def test_expired_and_not_client_auth(pki):
    now = dt.datetime.now(dt.timezone.utc)
    old = make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True,
                    not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=3))
    d = describe_certificate(old.der, _cas(pki))
    assert d["expired"] is True and d["days_left"] < 0 and usable_for_login(d).startswith("expired on")
    server = make_leaf("127.0.0.1", issuer=pki["Lab Advanced CA V3"], server_names=["127.0.0.1"])
    s = describe_certificate(server.der, _cas(pki))
    assert s["client_auth"] is False and "not for client authentication" in usable_for_login(s)
    good = describe_certificate(make_leaf("JEAN DUPONT", issuer=pki["Lab Classe 3 Plus V2"], client=True).der,
                                _cas(pki))
    for x in (d, s, good):
        x["nickname"] = "KEY:" + x["holder"]
    assert choose_certificate([d, s, good]) == (2, None)
    idx, why = choose_certificate([d, s])
    assert idx is None and "no certificate on the token is usable" in why and "expired on" in why
    idx, why = choose_certificate([d, good], selector=d["sha256"])
    assert idx == 0 and "trying it anyway" in why
    with pytest.raises(TokenError) as e:
        choose_certificate([good], selector="nothing")
    assert e.value.kind == "certificate_not_found"
    # exact matches only: a substring of the holder or of a label names nothing; the holder names both JEAN DUPONTs
    for sel in ("JEAN", "a", "KEY:JEAN"):
        with pytest.raises(TokenError) as e:
            choose_certificate([d, good], selector=sel)
        assert e.value.kind == "certificate_not_found", sel
    with pytest.raises(TokenError) as e:
        choose_certificate([d, good], selector="jean dupont")
    assert e.value.kind == "certificate_ambiguous" and sorted(e.value.details["candidates"]) == sorted(
        [d["sha256"], good["sha256"]])
    colon = ":".join(good["sha256"][i:i + 2] for i in range(0, 64, 2)).lower()
    assert choose_certificate([d, good], selector=colon) == (1, None)


def test_analyse_page_and_url():
    body = ('<p id="holder">JEAN DUPONT</p><p>Votre certificat est valide.</p>'
            '<p id="expiry">Il expire le 23/11/2029 (it expires on 2029-11-23)</p>')
    assert analyse_page(body, "Jean Dupont") == {"holder_found": True, "says_valid": True, "says_not_valid": False,
                                                 "expiry": "23/11/2029"}
    assert analyse_page("<h1>Forbidden</h1>", "JEAN DUPONT") == {"holder_found": False, "says_valid": False,
                                                                 "says_not_valid": False, "expiry": None}
    assert parse_url("https://services.certeurope.fr/") == ("services.certeurope.fr", 443, "/")
    assert parse_url("https://127.0.0.1:8443/status.json?x=1") == ("127.0.0.1", 8443, "/status.json?x=1")
    assert parse_url("https://h:65535/")[1] == 65535 and parse_url("https://h:1/")[1] == 1
    for bad in ("http://example.org/", "services.certeurope.fr", "https://h:99999/", "https://h:0/", "https://h:-1/",
                "https://h:65536/", "https://h:00/"):
        with pytest.raises(TLSError) as e:
            parse_url(bad)
        assert e.value.kind == "url"


@pytest.mark.parametrize("text,valid", [
    ("Votre certificat est valide.", True),
    ("Your certificate is valid.", True),
    ("Votre certificat n'est pas valide.", False),
    ("Votre certificat n\u2019est plus valide", False),
    ("Votre certificat n&#39;est pas valide.", False),
    ("Certificat non valide", False),
    ("Certificat invalide", False),
    ("Your certificate is not valid", False),
    ("Your certificate is no longer valid", False),
    ("This certificate isn't valid", False),
    ("Le certificat est <b>pas</b> valide", False),
])
def test_page_negation(text, valid):
    page = analyse_page("<p>%s</p>" % text, "JEAN DUPONT")
    assert page["says_valid"] is valid and page["says_not_valid"] is (not valid)


def _reader(raw, parts=1, limit=None):
    """HTTPReader over `raw` cut into `parts` pieces (a network delivers a page in arbitrary pieces)."""
    from ansible.module_utils.tokentrust_nss.tls import HTTPReader

    step = max(1, len(raw) // parts)
    pieces = [raw[i:i + step] for i in range(0, len(raw), step)][::-1]
    calls = []

    def recv():
        calls.append(1)
        return pieces.pop() if pieces else b""
    reader = HTTPReader(recv, **({"limit": limit} if limit else {}))
    return reader, reader.read(), calls


PAGE = b"<p>JEAN DUPONT</p><p>Votre certificat est valide.</p>"


@pytest.mark.parametrize("parts", [1, 3, 17, len(PAGE) + 200])
def test_http_chunked(parts):
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(PAGE[i:i + 5]), PAGE[i:i + 5]) for i in range(0, len(PAGE), 5))
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
           + chunks + b"0\r\nX-Trailer: t\r\n\r\nGARBAGE AFTER THE ANSWER")
    reader, (status, reason, headers, body), _ = _reader(raw, parts)
    assert (status, reason, body, reader.framing) == (200, "OK", PAGE, "chunked")


def test_http_content_length_stops_without_waiting_for_close():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE)
    served = [raw]

    def recv():
        if not served:
            raise AssertionError("read past Content-Length: a keep-alive server would make us wait")
        return served.pop()
    from ansible.module_utils.tokentrust_nss.tls import HTTPReader

    reader = HTTPReader(recv)
    assert reader.read()[3] == PAGE and reader.framing == "content-length"


def test_http_close_delimited_and_100_continue_and_no_reason():
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200\r\nServer: x\r\n\r\n" + PAGE
    reader, (status, reason, _, body), _ = _reader(raw, 4)
    assert (status, reason, body, reader.framing) == (200, "", PAGE, "close")


@pytest.mark.parametrize("raw,msg", [
    (b"", "without an HTTP answer"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n", "malformed chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc", "in the middle of the chunk"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", "not followed by CRLF"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", "in the middle of the page (5 of 50 bytes)"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nshort", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "in the middle of the HTTP headers"),
])
def test_http_errors(raw, msg):
    with pytest.raises(TLSError) as e:
        _reader(raw, 2)
    assert e.value.kind == "http" and msg in e.value.message


def test_http_limit_and_gzip():
    import gzip

    from ansible.module_utils.tokentrust_nss.tls import parse_http

    reader, (_, _, _, body), _ = _reader(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000,
                                         5, limit=1000)
    assert body == b"x" * 1000 and reader.truncated
    z = gzip.compress(PAGE)
    status, _, _, text = parse_http(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
                                    % (len(z), z))
    assert status == 200 and "JEAN DUPONT" in text


def test_choice_between_equal_certificates_does_not_depend_on_the_token_order(pki):
    """A key with two usable certificates of the same dates: the same one whatever order the token lists them in
    (SoftHSM2's object order changes between sessions; CI once saw two runs pick different ones)."""
    a = describe_certificate(make_leaf("JEAN DUPONT", issuer=pki["Lab Classe 3 Plus V2"], client=True).der,
                             _cas(pki))
    b = describe_certificate(make_leaf("JEAN DUPONT", issuer=pki["Lab Advanced CA V3"], client=True).der,
                             _cas(pki))
    b["days_left"], b["not_after"] = a["days_left"], a["not_after"]
    first = [a, b][choose_certificate([a, b])[0]]["sha256"]
    second = [b, a][choose_certificate([b, a])[0]]["sha256"]
    assert first == second == max(a["sha256"], b["sha256"])
