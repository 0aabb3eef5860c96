"""Stream pump: facade over the compiled kernel or its pure twin (chosen by _accel)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfast import _accel

if TYPE_CHECKING:
    from p2pfast._pump_py import Pump
else:
    Pump = _accel.module("pump").Pump

__all__ = ["Pump"]
