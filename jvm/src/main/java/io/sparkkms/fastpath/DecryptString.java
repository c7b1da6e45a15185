package io.sparkkms.fastpath;

import org.apache.spark.sql.api.java.UDF2;
import org.apache.spark.unsafe.types.UTF8String;

/** {@code spark_kms_decrypt_string(cell, config)}: a GCM cell back to its UTF-8 text, without a Java String. */
public final class DecryptString extends DecryptBase implements UDF2<byte[], byte[], UTF8String> {
    private static final long serialVersionUID = 1L;

    @Override
    public UTF8String call(byte[] cell, byte[] config) {
        byte[] plain = plain(cell, config);
        return plain == null ? null : UTF8String.fromBytes(plain);
    }
}
