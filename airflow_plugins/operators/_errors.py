"""Which spark_kms errors end an Airflow task for good and which are worth a retry: the one place
that decides, used by every operator and the sensor.

A retry helps only when the cause can go away by itself. A disabled key, a denied principal or a
tampered file stays so until a person acts; retrying it only delays the alert and repeats the
denied calls in the KMS audit log. So:

=================================================  ===========  ============================================
error                                              retried?     why
=================================================  ===========  ============================================
``KmsUnavailableError``, ``ThrottlingError``       yes          the KMS was unreachable or busy: it passes
``JobError``                                       yes          another job held the dataset, or a write did
                                                                not finish; the previous data is intact and
                                                                the rotation jobs resume where they stopped
``KmsError`` (any other)                           yes          a KMS failure of another kind (a vendor's
                                                                internal error): worth another try
``AccessDeniedError``, ``KeyStateError``,          no           a person must act: grant, re-enable, fix the
``KeyNotFoundError``, ``KeystoreError``,                        key, the data, or the task's settings
``InvalidCiphertextError``, ``FormatError``,
``DecryptionError``, ``ConfigurationError``,
``KeyUsageLimitError``
anything else                                      as Airflow   not a spark_kms error: Airflow's own rules
=================================================  ===========  ============================================

"No" raises :class:`~airflow.sdk.exceptions.AirflowFailException` (``"<Class>: <message>"``, the
spark_kms error chained): Airflow fails the task at once whatever ``retries`` says. "Yes" re-raises
the spark_kms error as it is. A spark_kms error that reached the operator inside a Spark exception
is treated as itself (:func:`spark_kms.spark.translate_spark_error`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    DecryptionError,
    FormatError,
    InvalidCiphertextError,
    KeyNotFoundError,
    KeyStateError,
    KeystoreError,
    KeyUsageLimitError,
    SparkKmsError,
)
from spark_kms.spark._errors import translate_spark_error

__all__ = ["PERMANENT_ERRORS", "is_permanent", "task_errors"]

#: spark_kms errors that a retry cannot fix (see the module docstring)
PERMANENT_ERRORS: tuple[type[SparkKmsError], ...] = (
    AccessDeniedError,
    KeyStateError,
    KeyNotFoundError,
    KeystoreError,
    InvalidCiphertextError,
    FormatError,
    DecryptionError,
    ConfigurationError,
    KeyUsageLimitError,
)


def is_permanent(error: BaseException) -> bool:
    """Whether ``error`` is a spark_kms error that retrying the task cannot fix."""
    return isinstance(error, PERMANENT_ERRORS)


@contextmanager
def task_errors() -> Iterator[None]:
    """Fail the task for good on a permanent spark_kms error; let the others through for Airflow
    to retry (see the module docstring). Also a decorator: ``@task_errors()``."""
    try:
        yield
    except Exception as exc:
        error = translate_spark_error(exc)
        if error is None:
            raise
        if error is not exc:  # rebuilt from a Spark exception: keep that one as its cause
            error.__cause__ = exc
        if is_permanent(error):
            raise AirflowFailException(f"{type(error).__name__}: {error}") from error
        if error is exc:
            raise
        raise error from exc
