"""Limits on what one message may make the decoders do: named, documented, shared.

Both decoders (columnar and fastavro's) enforce these, so a message is rejected for the same
reason whichever decoder the service runs.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_INT_VARINT_BYTES",
    "MAX_LONG_VARINT_BYTES",
    "MAX_ZERO_BYTE_ITEMS",
]

# Longest legal varint encodings: 5 bytes for a 32-bit int, 10 bytes for a 64-bit long.
MAX_INT_VARINT_BYTES: Final = 5
MAX_LONG_VARINT_BYTES: Final = 10
# Most items one array/map block may claim when an item can occupy zero bytes (e.g. null items):
# otherwise a 3-byte payload could announce 2**62 items and keep the decoder busy for ever.
MAX_ZERO_BYTE_ITEMS: Final = 1 << 16
