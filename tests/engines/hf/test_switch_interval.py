"""The GIL switch interval CUDA engines lower is reference-counted: closing one of two engines keeps it lowered
for the other, the last one gives the process its own setting back, and a setting someone else made since is kept.
(The engines call these on CUDA only; the bookkeeping is the same everywhere.)"""

from __future__ import annotations

import sys

import pytest

from chatplex.engines.hf import switch_interval


def test_the_last_holder_restores_the_process_setting():
    own = sys.getswitchinterval()
    switch_interval.lower(0.00005)
    switch_interval.lower(0.00005)
    assert sys.getswitchinterval() == pytest.approx(0.00005)
    switch_interval.release()  # one of two engines closes
    assert sys.getswitchinterval() == pytest.approx(0.00005)
    switch_interval.release()
    assert sys.getswitchinterval() == own
    switch_interval.release()  # an extra release changes nothing
    assert sys.getswitchinterval() == own


def test_a_setting_made_meanwhile_is_kept():
    own = sys.getswitchinterval()
    try:
        switch_interval.lower(0.00005)
        sys.setswitchinterval(0.001)  # the application's own choice while the engine ran
        switch_interval.release()
        assert sys.getswitchinterval() == 0.001
    finally:
        sys.setswitchinterval(own)
