"""Fragile, self-recovering watermark for model parameters.

`embed` hides keyed block tags and Reed-Solomon recovery data in the k low mantissa bits of
every float32; `verify` finds and locates tampered blocks; `recover` restores them bit-exactly
while tampering stays under the recovery bound. See common/integrity/watermark/layout.py for the layout.
"""

from common.integrity.watermark.api import (
    DEFAULT_K,
    MANIFEST_KEY,
    TensorDamage,
    WatermarkReport,
    embed,
    manifest_of,
    manifest_of_spec,
    recover,
    specs_of,
    strip,
    verify,
)
from common.integrity.watermark.verdict import INTACT, NOT_WATERMARKED, TAMPERED

__all__ = [
    "DEFAULT_K",
    "INTACT",
    "NOT_WATERMARKED",
    "TAMPERED",
    "MANIFEST_KEY",
    "TensorDamage",
    "WatermarkReport",
    "embed",
    "manifest_of",
    "manifest_of_spec",
    "recover",
    "specs_of",
    "strip",
    "verify",
]
