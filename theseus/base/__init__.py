"""Hardware facts: the chip catalogue."""

from theseus.base.chips import CHIPS, Chip, get_chip

__all__ = ["CHIPS", "Chip", "get_chip"]
