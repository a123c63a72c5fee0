"""The p0f mode: exactly two immutable objects, every deviation named, the user's switch mapped to them."""

from __future__ import annotations

import copy
import pickle

import pytest

from fingerprintd.mode import FIXED, P0F_BUGS, P0fMode

# The deviations, written out here (not read from the module): a new one is a decision this test sees.
DEVIATIONS = ("vlan_refused", "ipv6_ext_refused", "ack_bit24", "eol_last_byte_missed", "ttl_olen_cut",
              "flow_label_counts", "no_fallback", "nat_exact")


def test_the_switch_names_one_of_two_modes():
    assert P0fMode.of(False) is FIXED and P0fMode.of(True) is P0F_BUGS
    assert (FIXED.name, P0F_BUGS.name) == ("fixed", "p0f-bugs")
    for flag in (False, True):
        with pytest.raises(TypeError):
            P0fMode("mine", flag)  # no third mode, so no stage can hold one the others lack


def test_p0f_bugs_is_every_deviation_at_once():
    assert sorted(set(P0fMode.__slots__) - {"name", "p0f_bugs"}) == sorted(DEVIATIONS)
    assert [getattr(FIXED, d) for d in ("p0f_bugs", *DEVIATIONS)] == [False] * 9
    assert [getattr(P0F_BUGS, d) for d in ("p0f_bugs", *DEVIATIONS)] == [True] * 9
    assert all(P0fMode.__slots__[d] for d in DEVIATIONS)  # each with its description


def test_a_mode_cannot_change_or_be_copied_apart():
    for mode in (FIXED, P0F_BUGS):
        with pytest.raises(AttributeError):
            mode.ack_bit24 = not mode.ack_bit24
        with pytest.raises(AttributeError):
            del mode.nat_exact
        with pytest.raises(AttributeError):
            mode.other = 1
        assert copy.copy(mode) is mode and copy.deepcopy(mode) is mode and pickle.loads(pickle.dumps(mode)) is mode
