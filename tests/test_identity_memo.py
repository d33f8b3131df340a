"""The pricing path's identity-keyed memo: a hit only for the very object it was worked
out from, never for another that happens to get the same id, and bounded."""

from __future__ import annotations

import gc
import weakref

from tokenomy.billing.identity_memo import IdentityMemo


class Owner:
    pass


def test_a_value_is_found_again_for_its_own_owner_only() -> None:
    memo: IdentityMemo[str] = IdentityMemo()
    a, b = Owner(), Owner()
    memo.put(a, (id(a), 1), "a1")
    assert memo.get(a, (id(a), 1)) == "a1"
    assert memo.get(a, (id(a), 2)) is None
    # Another object presenting the same key (as an id recycled after a catalogue reload
    # would) does not get the first object's value.
    assert memo.get(b, (id(a), 1)) is None


def test_an_entry_keeps_its_owner_alive_so_its_id_is_not_handed_out_again() -> None:
    memo: IdentityMemo[int] = IdentityMemo(limit=2)
    o = Owner()
    alive = weakref.ref(o)
    memo.put(o, (id(o),), 1)
    del o
    gc.collect()
    assert alive() is not None  # while cached, no other object can take its id
    filler = [Owner(), Owner()]
    for f in filler:
        memo.put(f, (id(f),), 2)  # past the limit: emptied, the owner let go
    gc.collect()
    assert alive() is None


def test_it_empties_itself_past_its_limit() -> None:
    memo: IdentityMemo[int] = IdentityMemo(limit=3)
    owners = [Owner() for _ in range(4)]
    for i, o in enumerate(owners):
        memo.put(o, (id(o),), i)
    assert len(memo) == 1 and memo.get(owners[3], (id(owners[3]),)) == 3
