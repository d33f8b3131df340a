"""Ids: a prefix, a random part drawn once, then a counter in hex."""

from __future__ import annotations

import re

from tokenomy.core.call import new_request_id
from tokenomy.core.ids import UniqueIds


def test_ids_count_up_after_a_random_part() -> None:
    ids = UniqueIds("req_", width=12)
    a, b = ids.next(), ids.next()
    assert re.fullmatch(r"req_[0-9a-f]{12}0{11}1", a)
    assert b == a[:-1] + "2" and a < b
    assert UniqueIds("req_", width=12).next()[:16] != a[:16]  # another instance, another part


def test_a_narrow_width_grows_as_needed_and_a_prefix_is_taken_literally() -> None:
    ids = UniqueIds("a%b-")
    got = [ids.next() for _ in range(17)]
    assert got[0].startswith("a%b-") and got[0].endswith("1")
    assert got[14].endswith("f") and got[15].endswith("10") and got[16].endswith("11")


def test_request_ids_sort_in_arrival_order() -> None:
    ids = [new_request_id() for _ in range(300)]
    assert ids == sorted(ids) and len(set(ids)) == 300
