"""pyspark.ml Transformers that encrypt and decrypt PII columns: :class:`ColumnEncryptor`
and :class:`ColumnDecryptor`.

Both are pure-Python Transformers with ``DefaultParamsReadable/Writable`` (``save``/``load``,
usable as :class:`pyspark.ml.Pipeline` stages). Every Param is a plain string, list or
int, so a saved stage holds configuration only -- never key material, and never a secret
KMS option: ``save`` (also as a stage of a saved Pipeline or PipelineModel) writes
``kmsOptions`` as :meth:`KmsConfig.public_options() <spark_kms.kms.KmsConfig.public_options>`,
without the options each provider declares secret (a local root key, a Vault token, a client
secret). After ``load``, give them again with ``setKmsOptions``; a stage that needs one and
lacks it fails with its provider's own error (e.g. the local KMS: "no root key was given").

Layout of :class:`ColumnEncryptor`'s output
    * ``inputCols`` (AES-256-GCM) and ``deterministicCols`` (AES-SIV) keep their names and
      positions and become ``binary`` (cells as in docs/FORMAT.md; nulls stay null);
    * each ``blindIndexCols`` entry appends a ``binary`` blind-index column
      (``"email"`` -> ``email_bidx``, or ``"email=email_idx"`` to name it);
    * :data:`KEYS_COLUMN` (``_spark_kms_keys``, string) is appended last: the KeyTable JSON
      of the row's partition -- the wrapped data keys and column specs. It repeats on
      every row of a partition, which Parquet dictionary-encodes to almost nothing, so the
      wrapped keys travel with the rows: the ``spark_kms`` data source moves them into the
      file footer, and a dataset written by Spark's own Parquet writer stays decryptable.

Keys
    Each partition (one ``mapInArrow`` task) runs one
    :class:`~spark_kms.parquet.BatchEncryptor`: one GenerateDataKey on its first non-empty
    batch, a new data key only after ``maxCellsPerDek`` cells. ``mapInArrow`` emits batches
    before the partition ends while the key table still grows on roll-over, so each batch
    carries the key table *as of that batch*: it always holds the keys of its own cells.
    Deterministic and blind-index columns share one data key made once per ``transform``
    call on the driver, so equal values give equal cells across partitions.

    Under Spark Connect the join domain's key record is read (or made) and the per-transform
    deterministic key made on the server side (:func:`spark_kms.spark.remote.run_near_data`):
    the client touches no file and makes no KMS call.

    Spark may evaluate a transformed DataFrame more than once (each action re-runs the
    plan): each evaluation encrypts with new data keys, and each row carries its own key
    table, so any evaluation decrypts -- but write (or ``cache``) it once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCols
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable, DefaultParamsWriter

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_GCM_SUBJECT,
    AES_256_SIV,
    DEFAULT_MAX_CELLS_PER_DEK,
    KeyTable,
)
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig
from spark_kms.parquet.decryptor import check_on_erased
from spark_kms.parquet.encryptor import (
    BatchEncryptor,
    EncryptionSpec,
    check_protection_level,
    protection_levels_accepted,
)
from spark_kms.parquet.join_domains import domain_key
from spark_kms.parquet.keys import new_deterministic_entry
from spark_kms.spark._ml_shredding import ShreddingParams, SubjectStoreParam, optional_param
from spark_kms.spark._options import KEYS_COLUMN
from spark_kms.spark.conf import SparkKmsConf
from spark_kms.spark.remote import run_near_data
from spark_kms.spark.udfs import decrypt_udf, subject_spec

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = ["KEYS_COLUMN", "ColumnDecryptor", "ColumnEncryptor", "merge_key_tables"]

logger = logging.getLogger(__name__)


def _json_object(value: Any) -> str:
    """Param converter: a mapping (or its JSON text) -> canonical JSON text of an object."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise TypeError(f"expected a JSON object, got text that is not JSON ({exc.msg})") from None
    elif isinstance(value, Mapping):
        parsed = dict(value)
    else:
        raise TypeError(f"expected a mapping or its JSON text, got {type(value).__name__}")
    if not isinstance(parsed, dict):
        raise TypeError("expected a JSON object")
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"))


def _key_table_json(value: Any) -> str:
    """Param converter: a KeyTable (or its JSON text/bytes) -> its JSON text, validated."""
    if isinstance(value, KeyTable):
        return value.to_json().decode("utf-8")
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"expected a KeyTable or its JSON, got {type(value).__name__}")
    KeyTable.from_json(value, where="ColumnDecryptor keyTable param")
    return value


def _kms_options_json(value: Any) -> str:
    """Param converter: a KmsConfig, a mapping of provider options per key-URI scheme, or its
    JSON text -> canonical JSON text, checked the way :meth:`KmsConfig.of` checks it."""
    text = _json_object(value.options() if isinstance(value, KmsConfig) else value)
    try:
        KmsConfig.from_json(text)
    except ConfigurationError as exc:
        raise TypeError(str(exc)) from None
    return text


class _PublicParamsWriter(DefaultParamsWriter):
    """Saves a stage's Params with ``kmsOptions`` reduced to its public options (see the module docstring)."""

    def saveImpl(self, path: str) -> None:
        instance = self.instance
        params = {param.name: value for param, value in instance._paramMap.items()}
        if "kmsOptions" in params:
            kms = KmsConfig.of(params["kmsOptions"])
            public = kms.public_options()
            params["kmsOptions"] = _json_object(public)
            dropped = sorted(f"{scheme}.{name}" for scheme, opts in kms.options().items()
                             for name in opts if name not in public.get(scheme, {}))
            if dropped:
                logger.info("%s saved to %s without its secret KMS options %s: set them again with "
                            "setKmsOptions after load", type(instance).__name__, path, dropped)
        DefaultParamsWriter.saveMetadata(instance, path, self.sparkSession, paramMap=params)


class _KmsParams(Params):
    """Params shared by both transformers."""

    kmsOptions: Param[str] = Param(
        Params._dummy(),
        "kmsOptions",
        'provider options per key-URI scheme, as JSON, e.g. {"local": {"keystore": "/tmp/ks"}}',
        typeConverter=_kms_options_json,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(kmsOptions="{}")

    def getKmsOptions(self) -> dict[str, dict[str, Any]]:
        return json.loads(self.getOrDefault(self.kmsOptions))

    def setKmsOptions(self, value: KmsConfig | Mapping[str, Mapping[str, Any]] | str) -> Any:
        return self._set(kmsOptions=value)

    def kms_config(self, spark: Any = None) -> KmsConfig:
        """The kmsOptions Param as the :class:`~spark_kms.kms.KmsConfig` tasks carry, over the KMS options
        of ``spark``'s ``spark.spark_kms.*`` conf when a session is given (:mod:`spark_kms.spark.conf`)."""
        return SparkKmsConf.of(spark).kms_config(self.getOrDefault(self.kmsOptions))

    def write(self) -> DefaultParamsWriter:
        """The writer of ``save``: every Param, ``kmsOptions`` without its secret options."""
        return _PublicParamsWriter(self)


class ColumnEncryptor(Transformer, HasInputCols, _KmsParams, ShreddingParams, DefaultParamsReadable,
                      DefaultParamsWritable):
    """Encrypts PII columns with one data key per partition (layout in the module docstring).

    :param inputCols: columns to encrypt with AES-256-GCM (randomised).
    :param keyUri: the KMS key wrapping the data keys (``local://alias/pii``, ``aws-kms://...``); default the
        session's ``spark.spark_kms.keyUri``. Both transformers take KMS options from the session's
        ``spark.spark_kms.*`` conf too, under ``kmsOptions`` (:mod:`spark_kms.spark.conf`), at ``transform``.
    :param deterministicCols: columns to encrypt with AES-SIV (joinable, reveals equality).
    :param blindIndexCols: source columns to blind-index (``"email"`` or ``"email=email_idx"``).
    :param encryptionContext: JSON object of str -> str sent to the KMS (audit trail).
    :param kmsOptions: JSON object of provider options per key-URI scheme (or a KmsConfig, or a mapping);
        ``save`` drops its secret options (set them again after ``load``).
    :param maxCellsPerDek: non-null cells per data key before rolling to a new one.
    :param requireProtectionLevel: refuse a key guarded by less (``"hsm"``, ``"software"``,
        ``"external"``, or several comma-separated); checked once on the driver (DescribeKey) in
        ``transform``, before any data key is made.
    :param tenantColumn: with ``tenantKeys`` (a key-URI template with ``{tenant}``, or a JSON object tenant ->
        key URI): data keys per (partition, tenant), under each tenant's KMS key; ``keyUri`` may be unset.
    :param subjectColumn: encrypt ``inputCols`` per data subject, keys from ``subjectStore`` (docs/ERASURE.md).
    """

    keyUri: Param[str] = Param(
        Params._dummy(), "keyUri", "KMS key URI that wraps the data keys", typeConverter=TypeConverters.toString
    )
    deterministicCols: Param[list[str]] = Param(
        Params._dummy(),
        "deterministicCols",
        "columns encrypted with AES-SIV (equal values give equal cells)",
        typeConverter=TypeConverters.toListString,
    )
    blindIndexCols: Param[list[str]] = Param(
        Params._dummy(),
        "blindIndexCols",
        "source columns to blind-index: 'email' (-> email_bidx) or 'email=index_name'",
        typeConverter=TypeConverters.toListString,
    )
    encryptionContext: Param[str] = Param(
        Params._dummy(),
        "encryptionContext",
        "JSON object of str -> str sent to the KMS with every data-key request",
        typeConverter=_json_object,
    )
    maxCellsPerDek: Param[int] = Param(
        Params._dummy(),
        "maxCellsPerDek",
        "non-null AES-GCM cells per data key before rolling to a new data key",
        typeConverter=TypeConverters.toInt,
    )
    joinDomain: Param[str] = Param(
        Params._dummy(),
        "joinDomain",
        "join domain of the deterministic / blind-index columns: its one key is made once and reused by "
        "every transform (and data source write) naming it; unset: a new key per transform",
        typeConverter=TypeConverters.toString,
    )
    joinDomainStore: Param[str] = Param(
        Params._dummy(),
        "joinDomainStore",
        "directory holding the join domain's key (default $SPARK_KMS_JOIN_DOMAIN_STORE)",
        typeConverter=TypeConverters.toString,
    )

    requireProtectionLevel: Param[str] = Param(
        Params._dummy(),
        "requireProtectionLevel",
        "refuse a KMS key whose protection level is weaker: 'hsm', 'software', 'external' (or several, "
        "comma-separated); unset: any key",
        typeConverter=TypeConverters.toString,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        keyUri: str | None = None,
        deterministicCols: list[str] | None = None,
        blindIndexCols: list[str] | None = None,
        encryptionContext: Mapping[str, str] | str | None = None,
        kmsOptions: KmsConfig | Mapping[str, Mapping[str, Any]] | str | None = None,
        maxCellsPerDek: int | None = None,
        joinDomain: str | None = None,
        joinDomainStore: str | None = None,
        requireProtectionLevel: str | None = None,
        tenantColumn: str | None = None,
        tenantKeys: str | Mapping[str, str] | None = None,
        subjectColumn: str | None = None,
        subjectStore: str | None = None,
    ) -> None:
        super().__init__()
        self._setDefault(
            inputCols=[],
            deterministicCols=[],
            blindIndexCols=[],
            encryptionContext="{}",
            maxCellsPerDek=DEFAULT_MAX_CELLS_PER_DEK,
        )
        kwargs = self._input_kwargs
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    @keyword_only
    def setParams(
        self,
        *,
        inputCols: list[str] | None = None,
        keyUri: str | None = None,
        deterministicCols: list[str] | None = None,
        blindIndexCols: list[str] | None = None,
        encryptionContext: Mapping[str, str] | str | None = None,
        kmsOptions: KmsConfig | Mapping[str, Mapping[str, Any]] | str | None = None,
        maxCellsPerDek: int | None = None,
        joinDomain: str | None = None,
        joinDomainStore: str | None = None,
        requireProtectionLevel: str | None = None,
        tenantColumn: str | None = None,
        tenantKeys: str | Mapping[str, str] | None = None,
        subjectColumn: str | None = None,
        subjectStore: str | None = None,
    ) -> ColumnEncryptor:
        kwargs = self._input_kwargs
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def setInputCols(self, value: list[str]) -> ColumnEncryptor:
        return self._set(inputCols=value)

    def setKeyUri(self, value: str) -> ColumnEncryptor:
        return self._set(keyUri=value)

    def getKeyUri(self) -> str:
        return self.getOrDefault(self.keyUri)

    def setDeterministicCols(self, value: list[str]) -> ColumnEncryptor:
        return self._set(deterministicCols=value)

    def getDeterministicCols(self) -> list[str]:
        return list(self.getOrDefault(self.deterministicCols))

    def setBlindIndexCols(self, value: list[str]) -> ColumnEncryptor:
        return self._set(blindIndexCols=value)

    def getBlindIndexCols(self) -> list[str]:
        return list(self.getOrDefault(self.blindIndexCols))

    def setEncryptionContext(self, value: Mapping[str, str] | str) -> ColumnEncryptor:
        return self._set(encryptionContext=value)

    def getEncryptionContext(self) -> dict[str, str]:
        return json.loads(self.getOrDefault(self.encryptionContext))

    def setMaxCellsPerDek(self, value: int) -> ColumnEncryptor:
        return self._set(maxCellsPerDek=value)

    def getMaxCellsPerDek(self) -> int:
        return int(self.getOrDefault(self.maxCellsPerDek))

    def setRequireProtectionLevel(self, value: str) -> ColumnEncryptor:
        return self._set(requireProtectionLevel=value)

    def getRequireProtectionLevel(self) -> str | None:
        return self.getOrDefault(self.requireProtectionLevel) if self.isDefined(self.requireProtectionLevel) \
            else None

    def encryption_spec(self) -> EncryptionSpec:
        """The :class:`~spark_kms.parquet.EncryptionSpec` these Params describe."""
        blind_index: dict[str, str] = {}
        for item in self.getBlindIndexCols():
            source, _, index_name = item.partition("=")
            blind_index[source.strip()] = index_name.strip() or f"{source.strip()}_bidx"
        return EncryptionSpec(
            columns=list(self.getOrDefault(self.inputCols)),
            deterministic=self.getDeterministicCols(),
            blind_index=blind_index,
            subject_column=self.subject_column(),
        )

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from pyspark.sql.pandas.types import to_arrow_schema
        from pyspark.sql.types import BinaryType, StringType, StructField, StructType

        conf = SparkKmsConf.of(dataset.sparkSession)
        key_uri = self.getKeyUri() if self.isDefined(self.keyUri) else conf.option("key_uri")
        tenants = self.tenant_keys()
        if not key_uri and tenants is None:
            raise ConfigurationError("ColumnEncryptor needs keyUri (e.g. 'local://alias/pii'; or set the "
                                     "Spark conf spark.spark_kms.keyUri), or tenantColumn and tenantKeys")
        store = self.subject_store(conf)
        if KEYS_COLUMN in dataset.columns:
            raise ConfigurationError(
                f"the DataFrame already has a {KEYS_COLUMN!r} column: it is encrypted already "
                "(decrypt it first, or drop the column)"
            )
        spec = self.encryption_spec()
        kms = self.kms_config(conf)
        context = self.getEncryptionContext()
        max_cells = self.getMaxCellsPerDek()
        # Validates the key URI and the spec against the schema on the driver (missing columns,
        # unsupported types); no KMS call.
        BatchEncryptor(spec, key_uri, kms_options=kms, max_cells_per_dek=max_cells, tenant_keys=tenants,
                       subject_store=store).output_schema(to_arrow_schema(dataset.schema, timezone="UTC"))
        required = self.getRequireProtectionLevel()
        if protection_levels_accepted(required) is not None and not key_uri:
            raise ConfigurationError("ColumnEncryptor: requireProtectionLevel needs keyUri (tenant keys are not "
                                     "checked)")
        if protection_levels_accepted(required) is not None:
            # One DescribeKey where the KMS is reached (the Connect server's side), before any data key.
            run_near_data(dataset.sparkSession, _check_protection_level, key_uri, kms, required)
        deterministic_entry = None
        if spec.needs_deterministic_key:
            # The domain store and the KMS are reached where the data is (the Connect server's side).
            session = dataset.sparkSession
            domain = self.getOrDefault(self.joinDomain) if self.isDefined(self.joinDomain) else None
            if domain:
                store = self.getOrDefault(self.joinDomainStore) if self.isDefined(self.joinDomainStore) else None
                deterministic_entry = run_near_data(session, domain_key, None, key_uri=key_uri, kms_options=kms,
                                                    domain=domain, store=store or None)
            else:
                deterministic_entry = run_near_data(session, _new_deterministic_entry, key_uri, kms, context)
        encrypted = set(spec.columns) | set(spec.deterministic)
        fields = [
            StructField(f.name, BinaryType(), f.nullable) if f.name in encrypted else f
            for f in dataset.schema.fields
        ]
        fields += [StructField(name, BinaryType(), True) for name in spec.blind_index.values()]
        fields.append(StructField(KEYS_COLUMN, StringType(), False))
        logger.info("ColumnEncryptor: columns %s, deterministic %s, blind indexes %s under %s; %r",
                    list(spec.columns), list(spec.deterministic), dict(spec.blind_index), key_uri, kms)

        # The closure carries the key URI and the KmsConfig (options only), never a provider:
        # each task builds its own provider and client.
        def encrypt_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            encryptor = BatchEncryptor(
                spec,
                key_uri,
                encryption_context=context,
                max_cells_per_dek=max_cells,
                deterministic_entry=deterministic_entry,
                kms_options=kms,
                tenant_keys=tenants,
                subject_store=store,
            )
            try:
                for batch in batches:
                    out = encryptor.encrypt_batch(batch)
                    keys = encryptor.key_table().to_json().decode("utf-8")
                    yield out.append_column(KEYS_COLUMN, _repeat(keys, out.num_rows))
            finally:
                encryptor.close()

        return dataset.mapInArrow(encrypt_partition, StructType(fields))


def _check_protection_level(key_uri: str, kms: KmsConfig, required: str) -> None:
    check_protection_level(kms.provider(key_uri), required, description=kms.describe(key_uri))


def _new_deterministic_entry(key_uri: str, kms: KmsConfig, context: Mapping[str, str]) -> Any:
    """A new shared deterministic entry under ``key_uri`` (one GenerateDataKey; wrapped key only)."""
    return new_deterministic_entry(kms.provider(key_uri), context)


def _repeat(text: str, n: int) -> pa.Array:
    """``n`` copies of ``text`` as a string array, built in C (one dictionary entry, decoded)."""
    indices = pa.array([0] * n, pa.int32()) if n else pa.array([], pa.int32())
    return pa.DictionaryArray.from_arrays(indices, pa.array([text], pa.string())).dictionary_decode()


def merge_key_tables(documents: list[str | bytes | None], *, where: str = KEYS_COLUMN) -> KeyTable:
    """Merge the KeyTable JSON documents of a :data:`KEYS_COLUMN` column into one table.

    Partition tables of one encryption never disagree; two that do mean mixed datasets
    with clashing columns, refused with a FormatError naming the column or DEK.
    """
    table = KeyTable(deks={}, columns={})
    for doc in documents:
        if doc is None:
            continue
        table = table.merge(KeyTable.from_json(doc, where=where), where=where)
    return table


class ColumnDecryptor(Transformer, HasInputCols, _KmsParams, SubjectStoreParam, DefaultParamsReadable,
                      DefaultParamsWritable):
    """Decrypts the columns a :class:`ColumnEncryptor` encrypted, back to their original types.

    :param inputCols: columns to decrypt; default every decryptable column of the key table
        present in the DataFrame (blind indexes are one-way and stay as they are).
    :param keyTable: the KeyTable JSON to use; default: the distinct values of
        :data:`KEYS_COLUMN`, gathered with one small Spark job.
    :param kmsOptions: JSON object of provider options per key-URI scheme (or a KmsConfig, or a mapping);
        ``save`` drops its secret options (set them again after ``load``).
    :param subjectStore: the subject key store of per-subject columns (their subject column must be in the
        DataFrame).
    :param onErased: ``"null"`` (default; or the session's ``spark.spark_kms.onErased``): erased cells read as
        null; ``"raise"``: the action fails with ``ErasedDataError``.

    The output drops :data:`KEYS_COLUMN`. Data keys are unwrapped lazily on the executors,
    at most once per data key per worker process (:func:`~spark_kms.spark.udfs.decrypt_udf`).
    """

    keyTable: Param[str] = Param(
        Params._dummy(),
        "keyTable",
        f"KeyTable JSON; default: gathered from the {KEYS_COLUMN} column",
        typeConverter=_key_table_json,
    )
    onErased: Param[str] = Param(
        Params._dummy(), "onErased", "erased cells: 'null' (default) or 'raise' (ErasedDataError)",
        typeConverter=TypeConverters.toString,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        keyTable: KeyTable | str | None = None,
        kmsOptions: KmsConfig | Mapping[str, Mapping[str, Any]] | str | None = None,
        subjectStore: str | None = None,
        onErased: str | None = None,
    ) -> None:
        super().__init__()
        kwargs = self._input_kwargs
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    @keyword_only
    def setParams(
        self,
        *,
        inputCols: list[str] | None = None,
        keyTable: KeyTable | str | None = None,
        kmsOptions: KmsConfig | Mapping[str, Mapping[str, Any]] | str | None = None,
        subjectStore: str | None = None,
        onErased: str | None = None,
    ) -> ColumnDecryptor:
        kwargs = self._input_kwargs
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def setInputCols(self, value: list[str]) -> ColumnDecryptor:
        return self._set(inputCols=value)

    def setKeyTable(self, value: KeyTable | str) -> ColumnDecryptor:
        return self._set(keyTable=value)

    def key_table_for(self, dataset: DataFrame) -> KeyTable:
        """The key table used for ``dataset``: the ``keyTable`` Param, else gathered from the rows."""
        if self.isDefined(self.keyTable):
            return KeyTable.from_json(self.getOrDefault(self.keyTable), where="ColumnDecryptor keyTable param")
        if KEYS_COLUMN not in dataset.columns:
            raise ConfigurationError(
                f"ColumnDecryptor: the DataFrame has no {KEYS_COLUMN!r} column and no keyTable Param is set; "
                "pass keyTable= (e.g. spark_kms.parquet.read_dataset_key_table(path))"
            )
        rows = dataset.select(KEYS_COLUMN).distinct().collect()
        return merge_key_tables([row[0] for row in rows])

    def _transform(self, dataset: DataFrame) -> DataFrame:
        table = self.key_table_for(dataset)
        decryptable = [
            name for name, spec in table.columns.items()
            if spec.algorithm in (AES_256_GCM, AES_256_SIV, AES_256_GCM_SUBJECT)
        ]
        if self.isDefined(self.inputCols):
            columns = list(self.getOrDefault(self.inputCols))
            unknown = [c for c in columns if c not in decryptable]
            if unknown:
                raise ConfigurationError(
                    f"ColumnDecryptor: columns {unknown} are not decryptable according to the key table; "
                    f"decryptable columns: {decryptable}"
                )
            absent = [c for c in columns if c not in dataset.columns]
            if absent:
                raise ConfigurationError(
                    f"ColumnDecryptor: columns {absent} are not in the DataFrame; columns: {dataset.columns}"
                )
        else:
            columns = [c for c in decryptable if c in dataset.columns]
        kms = self.kms_config(dataset.sparkSession)
        conf = SparkKmsConf.of(dataset.sparkSession)
        store = self.subject_store(conf)
        on_erased = check_on_erased(optional_param(self, self.onErased) or conf.option("on_erased"))
        logger.info("ColumnDecryptor: decrypting %s with %d data keys; %r", columns, len(table.deks), kms)
        original = dataset
        for column in columns:
            spec = table.columns[column]
            udf = decrypt_udf(column, spec.arrow_type, table.deks, kms, spec=subject_spec(spec), subject_store=store,
                              on_erased=on_erased)
            if spec.subject is None:
                dataset = dataset.withColumn(column, udf(dataset[column]))
                continue
            if spec.subject not in original.columns:
                raise ConfigurationError(f"ColumnDecryptor: column {column!r} is encrypted per subject, by column "
                                         f"{spec.subject!r}, which is not in the DataFrame; columns: "
                                         f"{original.columns}")
            dataset = dataset.withColumn(column, udf(dataset[column], dataset[spec.subject]))
        if KEYS_COLUMN in dataset.columns:
            dataset = dataset.drop(KEYS_COLUMN)
        return dataset
