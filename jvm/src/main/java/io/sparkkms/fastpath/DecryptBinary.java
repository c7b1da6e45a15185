package io.sparkkms.fastpath;

import org.apache.spark.sql.api.java.UDF2;

/** {@code spark_kms_decrypt_binary(cell, config)}: a GCM cell back to its plaintext bytes. */
public final class DecryptBinary extends DecryptBase implements UDF2<byte[], byte[], byte[]> {
    private static final long serialVersionUID = 1L;

    @Override
    public byte[] call(byte[] cell, byte[] config) {
        return plain(cell, config);
    }
}
