"""Where datasets live: one storage layer for local paths and object-store URIs.

Every dataset path spark_kms takes -- the data source, the readers, the SQL functions, the jobs,
the CLI and the Airflow operators -- reaches storage through this module, built on pyarrow's
filesystems. No other module calls ``os``/``pathlib``/``open`` on a dataset path.

==============  ==========================================  =====================================
URI             filesystem                                  credentials (in order)
==============  ==========================================  =====================================
``/x``,         pyarrow ``LocalFileSystem``                 the process's file permissions
``file:///x``
``s3://b/k``,   pyarrow ``S3FileSystem``                    options ``s3.access_key`` /
``s3a://b/k``                                               ``s3.secret_key`` / ``s3.session_token``
                                                            / ``s3.role_arn``, else AWS's chain
                                                            (environment, ``~/.aws``, instance role)
``gs://b/k``    pyarrow ``GcsFileSystem``                   ``gcs.access_token``, else Google's
                                                            default credentials
``abfs[s]://``  pyarrow ``AzureFileSystem``                 ``azure.account_key`` /
``c@acct.dfs.                                               ``azure.client_id``..., else Azure's
core.windows.                                               default chain (environment, managed
net/k``                                                     identity, CLI)
``hdfs://h:p/`` pyarrow ``HadoopFileSystem`` (libhdfs,      Hadoop's own (Kerberos ticket cache,
                needs ``HADOOP_HOME``/``CLASSPATH``)        ``hdfs.kerb_ticket``)
==============  ==========================================  =====================================

Options (:data:`OPTION_NAMES`) come from, in order: the ``options`` argument (the data source's
``storage_options`` option, the jobs' ``storage_options=``), then the JSON object in the environment
variable ``SPARK_KMS_STORAGE_OPTIONS``, then each cloud's own environment: for S3 the standard
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (pyarrow does
not read the endpoint variables itself). Secret options (:data:`SECRET_OPTIONS`) never appear in a
repr, a log line or an error.

**Identity.** A dataset's text identity (:attr:`Location.identity`) is what spark_kms binds into
encryption contexts and authenticated manifests: the resolved absolute path for local data (as in
0.1.0), ``s3://bucket/key`` for both ``s3://`` and ``s3a://``, ``abfs://container@account/key`` for
both Azure schemes. :attr:`Location.uri` keeps the scheme the user gave, to hand to Spark.

**What each store guarantees** (the commit protocols in :mod:`spark_kms.spark._commit` and the jobs
build on exactly these): a local rename within one filesystem is atomic; an object PUT (single or
multipart, completed) appears whole or not at all on S3, GCS and Azure, with read-after-write
consistency; an object-store "rename" is a copy then a delete (neither atomic nor cheap);
:meth:`Location.create_exclusive` is atomic on local disks (``O_EXCL``) and on S3 (conditional PUT,
``If-None-Match: *``), GCS and Azure have equivalents that pyarrow does not expose, and there it is a
check-then-write (documented as not safe against two concurrent writers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from spark_kms.errors import ConfigurationError

__all__ = [
    "OPTION_NAMES",
    "SECRET_OPTIONS",
    "STORAGE_OPTIONS_ENV",
    "FileEntry",
    "Location",
    "LockTimeout",
    "StoragePath",
    "is_hidden",
    "is_local",
    "lock",
    "resolve",
    "storage_options_from",
]

logger = logging.getLogger(__name__)

STORAGE_OPTIONS_ENV = "SPARK_KMS_STORAGE_OPTIONS"

#: every option this module understands, per store
OPTION_NAMES = frozenset({
    "s3.endpoint_override", "s3.region", "s3.access_key", "s3.secret_key", "s3.session_token", "s3.role_arn",
    "s3.anonymous", "s3.force_virtual_addressing", "s3.request_timeout", "s3.connect_timeout",
    "gcs.endpoint_override", "gcs.access_token", "gcs.anonymous", "gcs.project_id",
    "azure.account_name", "azure.account_key", "azure.client_id", "azure.client_secret", "azure.tenant_id",
    "azure.sas_token", "azure.blob_storage_authority", "azure.dfs_storage_authority", "azure.blob_storage_scheme",
    "azure.dfs_storage_scheme",
    "hdfs.user", "hdfs.kerb_ticket", "hdfs.replication",
})
#: options that are credentials: masked everywhere
SECRET_OPTIONS = frozenset({
    "s3.secret_key", "s3.session_token", "gcs.access_token", "azure.account_key", "azure.client_secret",
    "azure.sas_token",
})

_SCHEMES = {"file": "file", "s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs", "gcs": "gs",
            "abfs": "abfs", "abfss": "abfs", "hdfs": "hdfs", "viewfs": "hdfs"}

PathLike = str | os.PathLike[str]


def is_hidden(name: str) -> bool:
    """Whether a file or directory name is not data (``_`` or ``.`` prefix: the rule of pyarrow.dataset and Spark)."""
    return name.startswith(("_", "."))


def is_local(path: PathLike | Location) -> bool:
    """Whether ``path`` names the local filesystem (a plain path or a ``file:`` URI)."""
    if isinstance(path, Location):
        return path.scheme == "file"
    text = os.fspath(path)
    return "://" not in text or text.startswith("file:")


def storage_options_from(value: Any, *, what: str = "storage_options") -> dict[str, str]:
    """Storage options from a mapping or a JSON object text (the Spark option form); checks the names."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigurationError(f"{what} must be a JSON object of storage options") from None
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{what} must be a mapping of storage options, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in OPTION_NAMES)
    if unknown:
        raise ConfigurationError(f"{what}: unknown storage options {unknown}; known: {sorted(OPTION_NAMES)}")
    return {str(k): str(v) for k, v in value.items() if v is not None}


def _env_options() -> dict[str, str]:
    raw = os.environ.get(STORAGE_OPTIONS_ENV)
    return storage_options_from(raw, what=f"${STORAGE_OPTIONS_ENV}") if raw else {}


def _truthy(text: str | None) -> bool:
    return str(text).lower() in {"1", "true", "yes"}


# -- filesystems ------------------------------------------------------------------------------------

_FS_CACHE: dict[tuple[Any, ...], pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()


def _filesystem(scheme: str, authority: str, options: Mapping[str, str]) -> pafs.FileSystem:
    key = (os.getpid(), scheme, authority, tuple(sorted(options.items())))
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            fs = _FS_CACHE[key] = _make_filesystem(scheme, authority, options)
            logger.debug("filesystem for %s://%s made (%s)", scheme, authority, type(fs).__name__)
        return fs


def _make_filesystem(scheme: str, authority: str, o: Mapping[str, str]) -> pafs.FileSystem:
    if scheme == "file":
        return pafs.LocalFileSystem()
    if scheme == "s3":
        endpoint = o.get("s3.endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = parts.netloc
            kwargs["scheme"] = parts.scheme or "https"
        region = o.get("s3.region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        for opt, arg in (("s3.access_key", "access_key"), ("s3.secret_key", "secret_key"),
                         ("s3.session_token", "session_token"), ("s3.role_arn", "role_arn")):
            if o.get(opt):
                kwargs[arg] = o[opt]
        if _truthy(o.get("s3.anonymous")):
            kwargs["anonymous"] = True
        if _truthy(o.get("s3.force_virtual_addressing")):
            kwargs["force_virtual_addressing"] = True
        for opt in ("s3.request_timeout", "s3.connect_timeout"):
            if o.get(opt):
                kwargs[opt.split(".", 1)[1]] = float(o[opt])
        return pafs.S3FileSystem(**kwargs)
    if scheme == "gs":
        kwargs = {}
        if o.get("gcs.endpoint_override"):
            parts = urlsplit(o["gcs.endpoint_override"])
            kwargs.update(endpoint_override=parts.netloc or parts.path, scheme=parts.scheme or "https")
        if o.get("gcs.access_token"):
            kwargs["access_token"] = o["gcs.access_token"]
        if o.get("gcs.project_id"):
            kwargs["project_id"] = o["gcs.project_id"]
        if _truthy(o.get("gcs.anonymous")):
            kwargs["anonymous"] = True
        return pafs.GcsFileSystem(**kwargs)
    if scheme == "abfs":
        account = o.get("azure.account_name") or authority.partition("@")[2].split(".", 1)[0]
        if not account:
            raise ConfigurationError("an abfs:// URI names the account: abfs://container@account.dfs.core.windows.net/path")
        kwargs = {"account_name": account}
        for opt in ("account_key", "client_id", "client_secret", "tenant_id", "sas_token", "blob_storage_authority",
                    "dfs_storage_authority", "blob_storage_scheme", "dfs_storage_scheme"):
            if o.get(f"azure.{opt}"):
                kwargs[opt] = o[f"azure.{opt}"]
        return pafs.AzureFileSystem(**kwargs)
    if scheme == "hdfs":
        host, _, port = authority.partition(":")
        kwargs = {"host": host or "default", "port": int(port or 0)}
        if o.get("hdfs.user"):
            kwargs["user"] = o["hdfs.user"]
        if o.get("hdfs.kerb_ticket"):
            kwargs["kerb_ticket"] = o["hdfs.kerb_ticket"]
        if o.get("hdfs.replication"):
            kwargs["replication"] = int(o["hdfs.replication"])
        return pafs.HadoopFileSystem(**kwargs)
    raise ConfigurationError(f"unsupported storage scheme {scheme!r}")  # pragma: no cover (resolve checks)


# -- locations ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One file found by :meth:`Location.list_files`: its location, size and modification time (epoch s)."""

    location: Location
    size: int
    mtime: float | None


@dataclass(frozen=True)
class Location:
    """A file or directory on some filesystem. Pickles as its URI and options (filesystems are made again
    in each process); its repr shows the URI only.

    :param scheme: ``file``, ``s3``, ``gs``, ``abfs`` or ``hdfs``.
    :param uri: the text to show and to hand to Spark (local: an absolute path; else scheme as given).
    :param path: the path as the pyarrow filesystem takes it (local: absolute; S3/GCS: ``bucket/key``;
        Azure: ``container/key``; HDFS: ``/path``).
    """

    scheme: str
    uri: str
    path: str
    authority: str = ""
    given_scheme: str = "file"
    options: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:  # so local Locations go wherever a path does
        if self.scheme != "file":
            raise TypeError(f"{self.uri} is not a local path")
        return self.path

    @property
    def fs(self) -> pafs.FileSystem:
        return _filesystem(self.scheme, self.authority, self.options)

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def identity(self) -> str:
        """The canonical text bound into encryption contexts and manifests (see the module docs)."""
        if self.scheme == "file":
            return os.path.realpath(self.path)
        scheme = {"s3": "s3", "gs": "gs", "abfs": "abfs", "hdfs": "hdfs"}[self.scheme]
        return f"{scheme}://{self.authority}/{self._key()}".rstrip("/")

    def _key(self) -> str:
        """The path below the authority (bucket/container/namenode), without a leading slash."""
        if self.scheme in ("s3", "gs", "abfs"):
            return self.path.partition("/")[2]
        return self.path.lstrip("/")

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        return self._with_path(posixpath.dirname(self.path.rstrip("/")))

    def join(self, *parts: str) -> Location:
        """A location below this one (``parts`` are ``/``-separated relative paths)."""
        rel = posixpath.join(*[p.strip("/") for p in parts if p])
        return self._with_path(posixpath.join(self.path.rstrip("/"), rel) if rel else self.path)

    def relative_to(self, base: Location) -> str:
        """This location's path relative to ``base`` (``/``-separated)."""
        return posixpath.relpath(self.path, base.path)

    def with_options(self, options: Mapping[str, str]) -> Location:
        return Location(self.scheme, self.uri, self.path, self.authority, self.given_scheme, dict(options))

    def _with_path(self, path: str) -> Location:
        if self.scheme == "file":
            uri = path or "/"
        elif self.scheme == "abfs":
            uri = f"{self.given_scheme}://{self.authority}/{path.partition('/')[2]}"
        elif self.scheme == "hdfs":
            uri = f"{self.given_scheme}://{self.authority}{path if path.startswith('/') else '/' + path}"
        else:
            uri = f"{self.given_scheme}://{path}"
        return Location(self.scheme, uri, path, self.authority, self.given_scheme, self.options)

    # -- queries ---------------------------------------------------------------------------------
    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        """A directory (local), or a prefix with objects under it (object stores)."""
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def size(self) -> int:
        info = self.info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(self.uri)
        return int(info.size)

    def list_files(self, *, recursive: bool = True, include_hidden: bool = False) -> list[FileEntry]:
        """The files under this directory, sorted by path (the stores' pagination is pyarrow's). Without
        ``include_hidden``, files with a hidden name or under a hidden directory (relative to this one) are
        left out. An absent directory lists nothing."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self.path.rstrip("/")
        out: list[FileEntry] = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = posixpath.relpath(info.path, base)
            if not include_hidden and any(is_hidden(part) for part in rel.split("/")):
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else None
            out.append(FileEntry(self._with_path(info.path), int(info.size or 0), mtime))
        out.sort(key=lambda e: e.location.path)
        return out

    def list_dirs(self) -> list[Location]:
        """The immediate sub-directories (prefixes) of this directory, sorted."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted((self._with_path(i.path) for i in infos if i.type == pafs.FileType.Directory),
                      key=lambda loc: loc.path)

    # -- reading ---------------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as fh:
            return fh.read()

    def read_bytes_or_none(self) -> bytes | None:
        try:
            return self.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if self.scheme != "file" and not self.exists():
                return None
            raise exc

    def open_input_file(self) -> pa.NativeFile:
        """A random-access file (Parquet footers need seeks)."""
        return self.fs.open_input_file(self.path)

    # -- writing ---------------------------------------------------------------------------------
    def open_output_stream(self) -> pa.NativeFile:
        """A new file (replacing any): on object stores the object appears, whole, when the stream closes."""
        if self.scheme == "file":
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        return self.fs.open_output_stream(self.path)

    def write_bytes_atomic(self, data: bytes) -> None:
        """Replace this file's content so that a reader sees all the old or all the new bytes: a temporary
        file, fsync and rename on a local disk; one PUT on an object store."""
        if self.scheme == "file":
            from spark_kms._atomic import atomic_write_bytes

            atomic_write_bytes(self.path, data)
            return
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)

    def write_json_atomic(self, obj: Any) -> None:
        self.write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def create_exclusive(self, data: bytes) -> bool:
        """Create this file with ``data`` only if it does not exist; False if it does. Atomic on local disks
        and S3 (see the module docs for the other stores)."""
        if self.scheme == "file":
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        if self.scheme == "s3":
            return _s3_put_if_absent(self, data)
        if self.exists():
            return False
        self.write_bytes_atomic(data)
        return True

    def mkdirs(self) -> None:
        """Create this directory (local) -- object stores have no directories to make."""
        if self.scheme == "file":
            os.makedirs(self.path, exist_ok=True)

    def delete_file(self, *, missing_ok: bool = True) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_dir_if_empty(self) -> None:
        """Remove this directory if it is empty (local: ``rmdir``, which never removes a file another
        process just put there); object stores have no directories: nothing to do."""
        if self.scheme == "file":
            with contextlib.suppress(OSError):
                os.rmdir(self.path)

    def delete_dir(self) -> None:
        """Delete this directory and everything under it; nothing if it is absent."""
        try:
            self.fs.delete_dir(self.path)
        except FileNotFoundError:
            pass

    def move_to(self, target: Location) -> None:
        """Move a file: an atomic rename on a local disk, copy then delete on an object store (where the
        target appears whole, but for a moment both exist)."""
        if target.scheme != self.scheme or target.authority != self.authority:
            raise ConfigurationError(f"cannot move {self.uri} to {target.uri}: another filesystem")
        if self.scheme == "file":
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
            os.replace(self.path, target.path)
            return
        self.fs.move(self.path, target.path)

    def copy_to(self, target: Location) -> None:
        self.fs.copy_file(self.path, target.path)

    def walk_dirs_bottom_up(self) -> Iterator[Location]:
        """Every directory under this one, deepest first (local disks only; object stores have none)."""
        if self.scheme != "file":
            return
        for dirpath, _dirs, _files in os.walk(self.path, topdown=False):
            if dirpath != self.path:
                yield self._with_path(dirpath)


StoragePath = str | os.PathLike[str] | Location


def resolve(path: StoragePath, options: Mapping[str, str] | str | None = None) -> Location:
    """The :class:`Location` of a local path or a storage URI (see the module docs for the forms).

    :param options: storage options (a mapping or a JSON object), over ``$SPARK_KMS_STORAGE_OPTIONS``.
    :raises ConfigurationError: an unsupported scheme or a malformed URI.
    """
    given = storage_options_from(options)
    if isinstance(path, Location):
        return path.with_options({**path.options, **given}) if given else path
    text = os.fspath(path)
    if not text:
        raise ConfigurationError("empty dataset path")
    merged = {**_env_options(), **given}
    if "://" not in text:
        if text.startswith("file:"):
            text = text[len("file:"):]
        full = os.path.abspath(text)
        return Location("file", full, full, "", "file", merged)
    parts = urlsplit(text)
    given_scheme = parts.scheme.lower()
    scheme = _SCHEMES.get(given_scheme)
    if scheme is None:
        raise ConfigurationError(
            f"unsupported storage URI {text!r}: use a local path, file://, s3:// (s3a://), gs://, abfs[s]:// or hdfs://"
        )
    if scheme == "file":
        full = os.path.abspath(parts.path or "/")
        return Location("file", full, full, "", "file", merged)
    key = parts.path.lstrip("/")
    if scheme in ("s3", "gs"):
        if not parts.netloc:
            raise ConfigurationError(f"storage URI {text!r} names no bucket ({given_scheme}://bucket/path)")
        fs_path = posixpath.join(parts.netloc, key) if key else parts.netloc
        uri = f"{given_scheme}://{fs_path}".rstrip("/")
        return Location(scheme, uri, fs_path.rstrip("/"), parts.netloc, given_scheme, merged)
    if scheme == "abfs":
        container, _, _host = parts.netloc.partition("@")
        if not container or not _host:
            raise ConfigurationError(
                f"storage URI {text!r}: expected {given_scheme}://container@account.dfs.core.windows.net/path"
            )
        fs_path = posixpath.join(container, key) if key else container
        uri = f"{given_scheme}://{parts.netloc}/{key}".rstrip("/")
        return Location(scheme, uri, fs_path.rstrip("/"), parts.netloc, given_scheme, merged)
    # hdfs
    fs_path = "/" + key
    return Location(scheme, f"{given_scheme}://{parts.netloc}{fs_path}".rstrip("/") or text,
                    fs_path.rstrip("/") or "/", parts.netloc, given_scheme, merged)


def temp_name(name: str) -> str:
    """A hidden sibling name for a temporary copy of ``name`` (never listed as data)."""
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp"


class LockTimeout(Exception):
    """The lock is held by someone else (:func:`lock`); ``holder`` describes them if known."""

    def __init__(self, location: Location, holder: str = "") -> None:
        super().__init__(f"{location.uri} is locked{f' by {holder}' if holder else ''}")
        self.location = location
        self.holder = holder


#: an object-store lock not renewed for this long (seconds) belongs to a dead holder
DEFAULT_LEASE_S = 120.0


@contextmanager
def lock(location: Location, *, timeout: float = 0.0, lease_s: float = DEFAULT_LEASE_S) -> Iterator[None]:
    """Hold an exclusive lock named by ``location`` for the ``with`` block.

    Local disks: an OS file lock (``filelock``), which the OS drops when the holder dies, even by SIGKILL.
    Object stores: a lock object created with :meth:`Location.create_exclusive` holding its owner and a
    lease; a thread renews the lease every ``lease_s / 3`` seconds while the block runs, and a lock whose
    lease ran out (its holder died) is taken over. A holder renews and releases only a lock object that still
    names it (check then write: a holder stalled past its lease logs that it lost the lock and never removes
    or overwrites the new holder's). On S3 creation is atomic; on GCS/Azure/HDFS it is a
    check-then-write (see the module docs).

    :raises LockTimeout: the lock is still held by another after ``timeout`` seconds.
    """
    if location.is_local:
        from filelock import FileLock, Timeout

        os.makedirs(os.path.dirname(location.path), exist_ok=True)
        file_lock = FileLock(location.path, timeout=timeout)
        try:
            file_lock.acquire()
        except Timeout:
            raise LockTimeout(location) from None
        try:
            yield
        finally:
            file_lock.release()
        return
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def body() -> bytes:
        return json.dumps({"owner": owner, "expires_at": time.time() + lease_s}).encode("utf-8")

    deadline = time.monotonic() + timeout
    while not location.create_exclusive(body()):
        held = location.read_bytes_or_none()
        try:
            doc = json.loads(held) if held else {}
        except ValueError:
            doc = {}
        if held is not None and float(doc.get("expires_at", 0)) < time.time():
            logger.warning("lock %s: lease of %s ran out; taking it over", location.uri, doc.get("owner"))
            location.delete_file()
            continue
        if time.monotonic() >= deadline:
            raise LockTimeout(location, str(doc.get("owner", "")))
        time.sleep(0.2)
    stop = threading.Event()

    def still_ours() -> bool:
        held = location.read_bytes_or_none()
        try:
            return held is not None and json.loads(held).get("owner") == owner
        except ValueError:
            return False

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            with contextlib.suppress(Exception):
                if not still_ours():  # stalled past the lease and taken over: never overwrite the new holder
                    logger.error("lock %s: lost to another holder (this holder was stalled past its %.0f s lease)",
                                 location.uri, lease_s)
                    return
                location.write_bytes_atomic(body())

    renewer = threading.Thread(target=renew, name=f"spark_kms-lock-{location.name}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if still_ours():
            location.delete_file()


def _s3_put_if_absent(loc: Location, data: bytes) -> bool:
    """S3's conditional PUT (``If-None-Match: *``) through boto3, which pyarrow does not expose."""
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError:
        raise ImportError(
            "locks and journals on s3:// need boto3 (S3's conditional PUT): pip install 'spark-kms[s3]'"
        ) from None

    o = loc.options
    endpoint = o.get("s3.endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {}
    if endpoint:
        kwargs["endpoint_url"] = endpoint if "://" in endpoint else f"https://{endpoint}"
    if o.get("s3.region"):
        kwargs["region_name"] = o["s3.region"]
    if o.get("s3.access_key"):
        kwargs.update(aws_access_key_id=o["s3.access_key"], aws_secret_access_key=o.get("s3.secret_key"),
                      aws_session_token=o.get("s3.session_token"))
    client = boto3.client("s3", **kwargs)
    bucket, _, key = loc.path.partition("/")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return False
        raise
    return True
