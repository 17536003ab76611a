"""The daemon's collector settings (gateway/runtime/gc_tuning.py)."""

import gc
from collections.abc import Iterator

import pytest

from gateway.runtime.gc_tuning import GEN0_THRESHOLD, tune_after_start


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_start_up_objects_are_frozen_and_cycles_made_later_are_still_freed() -> None:
    _, gen1, gen2 = gc.get_threshold()
    tune_after_start()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GEN0_THRESHOLD, gen1, gen2)

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    assert gc.collect() >= 2  # the collector still runs and finds new cycles
