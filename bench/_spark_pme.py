"""Spark's own Parquet Modular Encryption (PME) in the same run as spark_kms, over the embedded local KMS.

Spark writes and reads PME through parquet-java's ``PropertiesDrivenCryptoFactory``, which calls a JVM
``KmsClient`` class to wrap and unwrap its key-encryption keys. The local KMS is Python, so this module

* serves it on loopback (:class:`LocalKmsHttp`: ``POST /wrap?master=ID`` with the base64 key as body answers
  the wrapped key, ``POST /unwrap?master=ID`` the reverse; each call is a local KMS Encrypt / Decrypt, audited
  like every spark_kms call), and
* compiles, with the JDK's ``javac`` against pyspark's jars, a small ``KmsClient`` that calls it
  (:data:`JAVA_SOURCE`), into a jar under the bench's work directory (never into the project's jar).

The crypto factory, the client class and the server's URL are DataFrame reader / writer options, so only the
PME steps use them (Spark copies such options into the Hadoop configuration of that scan or write). PME settings:
AES_GCM_V1, double wrapping (the KMS is called per key-encryption key, not per file), the PII columns under one
column key, an encrypted footer under a footer key -- as ``bench/_pme.py`` does at the pyarrow level.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

FOOTER_KEY = "alias/bench-spark-pme-footer"
COLUMN_KEY = "alias/bench-spark-pme-pii"
CLIENT_CLASS = "sparkkmsbench.LocalKmsHttpClient"
_CONTEXT = {"pme": "spark-bench"}

JAVA_SOURCE = r"""
package sparkkmsbench;

import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.util.Base64;

import org.apache.hadoop.conf.Configuration;
import org.apache.parquet.crypto.KeyAccessDeniedException;
import org.apache.parquet.crypto.keytools.KmsClient;

/** Bench only: a parquet-java KmsClient over the bench's loopback server in front of spark_kms's local KMS. */
public final class LocalKmsHttpClient implements KmsClient {
    private String url;

    @Override
    public void initialize(Configuration conf, String kmsInstanceID, String kmsInstanceURL, String accessToken) {
        this.url = kmsInstanceURL;
    }

    @Override
    public String wrapKey(byte[] keyBytes, String masterKeyIdentifier) throws KeyAccessDeniedException {
        return post("wrap", masterKeyIdentifier, Base64.getEncoder().encodeToString(keyBytes));
    }

    @Override
    public byte[] unwrapKey(String wrappedKey, String masterKeyIdentifier) throws KeyAccessDeniedException {
        return Base64.getDecoder().decode(post("unwrap", masterKeyIdentifier, wrappedKey));
    }

    private String post(String op, String master, String body) throws KeyAccessDeniedException {
        try {
            URL u = new URL(url + "/" + op + "?master=" + URLEncoder.encode(master, StandardCharsets.UTF_8));
            HttpURLConnection c = (HttpURLConnection) u.openConnection();
            c.setRequestMethod("POST");
            c.setDoOutput(true);
            try (OutputStream out = c.getOutputStream()) {
                out.write(body.getBytes(StandardCharsets.US_ASCII));
            }
            if (c.getResponseCode() != 200) {
                throw new KeyAccessDeniedException("local KMS refused " + op + " with " + master);
            }
            try (InputStream in = c.getInputStream()) {
                ByteArrayOutputStream buf = new ByteArrayOutputStream();
                in.transferTo(buf);
                return buf.toString(StandardCharsets.US_ASCII);
            }
        } catch (java.io.IOException e) {
            throw new KeyAccessDeniedException("local KMS " + op + " failed: " + e.getClass().getSimpleName(), e);
        }
    }
}
"""


class LocalKmsHttp:
    """The embedded local KMS on loopback for the JVM client: wrap = Encrypt, unwrap = Decrypt."""

    def __init__(self, keystore: str) -> None:
        from spark_kms.kms.local import LocalKms

        kms = LocalKms(keystore)
        for alias in (FOOTER_KEY, COLUMN_KEY):
            kms.create_key(alias=alias)
        self.calls = {"wrap": 0, "unwrap": 0}
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                parsed = urlparse(self.path)
                master = parse_qs(parsed.query).get("master", [""])[0]
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode("ascii")
                with lock:
                    if parsed.path == "/wrap":
                        wrapped = kms.encrypt(master, base64.b64decode(body), _CONTEXT)
                        answer = base64.b64encode(wrapped.ciphertext).decode("ascii")
                    elif parsed.path == "/unwrap":
                        key = kms.decrypt(base64.b64decode(body), _CONTEXT, key=master)
                        answer = base64.b64encode(bytes(key)).decode("ascii")
                    else:
                        self.send_error(404)
                        return
                    owner.calls[parsed.path[1:]] += 1
                payload = answer.encode("ascii")
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def build_client_jar(workdir: Path) -> Path:
    """Compile :data:`JAVA_SOURCE` against pyspark's jars into ``workdir/spark-pme-bench.jar``."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    src = workdir / "spark_pme_src" / "sparkkmsbench" / "LocalKmsHttpClient.java"
    classes = workdir / "spark_pme_classes"
    src.parent.mkdir(parents=True, exist_ok=True)
    classes.mkdir(parents=True, exist_ok=True)
    src.write_text(JAVA_SOURCE)
    subprocess.run(["javac", "--release", "17", "-nowarn", "-cp", f"{jars}/*", "-d", str(classes), str(src)],
                   check=True)
    jar = workdir / "spark-pme-bench.jar"
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "."], check=True)
    return jar


def session_conf(conf: dict[str, str], jar: Path) -> dict[str, str]:
    """``conf`` with the client jar added to the driver's class path and to ``spark.jars``."""
    out = dict(conf)
    for key, sep in (("spark.jars", ","), ("spark.driver.extraClassPath", ":")):
        have = out.get(key, "")
        out[key] = f"{have}{sep}{jar}" if have else str(jar)
    return out


def options(server: LocalKmsHttp, pii: list[str] | None = None) -> dict[str, str]:
    """Reader options (``pii`` None) or writer options (the PII columns under the column key) of Spark's PME."""
    out = {
        "parquet.crypto.factory.class": "org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory",
        "parquet.encryption.kms.client.class": CLIENT_CLASS,
        "parquet.encryption.kms.instance.url": server.url,
    }
    if pii is not None:
        out.update({
            "parquet.encryption.column.keys": f"{COLUMN_KEY}:{','.join(pii)}",
            "parquet.encryption.footer.key": FOOTER_KEY,
            "parquet.encryption.algorithm": "AES_GCM_V1",
            "parquet.encryption.double.wrapping": "true",
        })
    return out
