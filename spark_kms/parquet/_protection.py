"""Key protection levels a writer accepts (``require_protection_level``): checked once per KMS key, before any
data key is made under it. Used by :class:`~spark_kms.parquet.BatchEncryptor` (re-exported there)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsProvider
from spark_kms.kms.base import PROTECTION_LEVELS, KeyDescription

__all__ = ["check_protection_level", "protection_levels_accepted"]

logger = logging.getLogger("spark_kms.parquet.encryptor")


def protection_levels_accepted(required: str | Sequence[str] | None) -> frozenset[str] | None:
    """The key protection levels a ``require_protection_level`` setting accepts (``None``: no requirement).

    ``required`` is one level of :data:`~spark_kms.kms.base.PROTECTION_LEVELS`, several (a list, or a
    comma-separated string: any of them will do), or empty / ``None``. The order is
    ``software < hsm``: ``"software"`` accepts every key, ``"hsm"`` accepts HSM keys only.
    ``"external"`` (an external key manager: GCP EXTERNAL / EXTERNAL_VPC, an AWS external key store)
    stands apart: the KMS cannot say what guards the key outside it, so it neither meets ``"hsm"`` nor
    counts as weaker; ask for it by name (``"external"``) or accept both with ``"hsm,external"``.
    """
    if required is None:
        return None
    names = required.split(",") if isinstance(required, str) else list(required)
    levels = [str(n).strip().lower() for n in names if str(n).strip()]
    if not levels:
        return None
    unknown = [n for n in levels if n not in PROTECTION_LEVELS]
    if unknown:
        raise ConfigurationError(
            f"require_protection_level takes {', '.join(PROTECTION_LEVELS)} (or several, comma-separated), "
            f"got {required!r}"
        )
    accepted: set[str] = set()
    for level in levels:
        accepted.update(PROTECTION_LEVELS if level == "software" else (level,))
    return frozenset(accepted)


def check_protection_level(
    provider: KmsProvider, required: str | Sequence[str] | None, *, description: KeyDescription | None = None
) -> KeyDescription | None:
    """Refuse ``provider``'s key when its protection level is weaker than ``required``.

    One DescribeKey (unless ``description`` is given), made before any data key; raises
    :class:`~spark_kms.errors.ConfigurationError` naming the key, its level and what was required.
    Returns the description (``None`` when nothing is required, and then no KMS call is made).
    """
    accepted = protection_levels_accepted(required)
    if accepted is None:
        return None
    if description is None:
        description = provider.describe_key()
    level = description.protection_level
    if level not in accepted:
        detail = f" ({description.protection_detail})" if description.protection_detail else ""
        wanted = required if isinstance(required, str) else ",".join(required or ())
        raise ConfigurationError(
            f"key {provider.key_uri} (KMS key {description.key_id}) has protection level {level!r}{detail}; "
            f"require_protection_level={wanted!r} refuses to encrypt under it (accepted: {sorted(accepted)})"
        )
    logger.debug("key %s: protection level %s%s meets require_protection_level=%r", provider.key_uri, level,
                 f" ({description.protection_detail})" if description.protection_detail else "", required)
    return description
