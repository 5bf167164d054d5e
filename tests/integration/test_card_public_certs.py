"""The key's certificates are seen before the PIN on a real smart-card stack (pcscd + vpcd + OpenSC, the lab's PIV
card): the test login decides on them before presenting anything (issue 26: no PIN try on a login that cannot pass).

NSS hides every object of a token that needs a login unless the slot is "friendly"; OpenSC's PIV slot is not, so
without tokentrust_nss.token._public_certs the list was empty before the PIN and the login refused a key whose
certificates are all there ("the key holds no certificate"). SoftHSM2 tokens did not show it. Counted on the card.
"""
import pytest

from lab import piv_card
from tests.support.card import OPENSC, local_card, why_not

pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not() is not None, reason=str(why_not()))]


def test_certificates_listed_before_the_pin_and_no_pin_presented(tmp_path):
    from ansible.module_utils.tokentrust_nss._ffi import ffi, lib
    from ansible.module_utils.tokentrust_nss.token import TokenSession

    with local_card(tmp_path) as card:
        before = card.counters()
        with TokenSession(OPENSC) as ts:
            tok = ts.token
            assert lib.nss3.PK11_NeedLogin(tok.slot) and not lib.nss3.PK11_IsLoggedIn(tok.slot, ffi.NULL)
            names = sorted(c["nickname"] or "" for c in tok.certificates())
        after = card.counters()
    assert len(names) == 2 and all(piv_card.HOLDER in n for n in names), names
    assert after["pin_tries_left"] == before["pin_tries_left"] == 3  # nothing presented to the card
