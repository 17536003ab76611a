"""Public ids: the documented shape, unique, and later ids sort after earlier ones."""

from __future__ import annotations

import re
import time

from gateway.domain.ids import new_id


def test_shape_fits_the_id_columns_and_message_id_headers() -> None:
    value = new_id("msg")
    assert re.fullmatch(r"msg_[0-9a-f]{24}", value)
    assert len(new_id("att")) + 4 <= 40  # attachment ids append a 4-digit position


def test_ids_made_later_sort_later_and_never_repeat() -> None:
    first = [new_id("thr") for _ in range(2000)]
    time.sleep(0.002)
    later = [new_id("thr") for _ in range(2000)]
    assert len(set(first + later)) == 4000
    assert max(first) < min(later)


def test_ids_stay_unique_across_many_refills_and_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    def make(n: int) -> list[str]:
        return [new_id("msg") for _ in range(n)]

    with ThreadPoolExecutor(4) as pool:
        made = [i for chunk in pool.map(make, [3000] * 4) for i in chunk]
    assert len(set(made)) == len(made) == 12000
    assert len({i[-12:] for i in made}) == len(made)  # the random halves alone never repeat
