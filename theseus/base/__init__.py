"""Hardware facts: the chip catalogue."""

from theseus.base.chips import CHIPS, Chip, get_chip, usable_cores

__all__ = ["CHIPS", "Chip", "get_chip", "usable_cores"]
