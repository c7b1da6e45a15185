package io.sparkkms.fastpath;

import java.io.Serializable;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import org.apache.spark.rdd.InputFileBlockHolder;

/**
 * The body of the fast path's decrypt UDFs: {@code f(cell binary, config binary)}. The config (a binary literal
 * built by {@code spark_kms.spark.fastpath}) holds the key handle, the column name, a label for messages and the
 * AAD tails to try ({@code u16 len(column) || column || context}, docs/FORMAT.md section 3) -- never key bytes.
 * Each task keeps one cipher per data key and frees them (wiping OpenSSL's key schedules) when it completes
 * ({@link CellDecryptor}, shared with the Catalyst expression and the columnar path).
 */
abstract class DecryptBase implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final byte[] MAGIC = "SKF1".getBytes(StandardCharsets.US_ASCII);

    /** The state of the thread (task) using this instance; replaced when another thread calls. */
    private transient volatile PerThread state;

    /** The plaintext bytes of {@code cell} (null stays null). No lock per cell: the state is task-confined. */
    protected final byte[] plain(byte[] cell, byte[] configBytes) {
        if (cell == null) {
            return null;
        }
        PerThread st = state;
        if (st == null || st.owner != Thread.currentThread()) {
            st = claim();
        }
        return st.decryptorFor(configBytes).plain(cell);
    }

    private synchronized PerThread claim() {
        PerThread st = state;
        if (st == null || st.owner != Thread.currentThread()) {
            st = new PerThread();
            state = st;
        }
        return st;
    }

    /** One thread's decryptors, by config literal (the same array object row after row: checked first). */
    private static final class PerThread {
        final Thread owner = Thread.currentThread();
        private final Map<ByteBuffer, CellDecryptor> byConfig = new HashMap<>();
        private byte[] lastRef;
        private CellDecryptor last;

        CellDecryptor decryptorFor(byte[] configBytes) {
            if (configBytes == lastRef) {
                return last;
            }
            if (configBytes == null) {
                Config.parse(null); // the ConfigurationError
            }
            ByteBuffer key = ByteBuffer.wrap(configBytes);
            CellDecryptor d = byConfig.get(key);
            if (d == null) {
                d = new CellDecryptor(Config.parse(configBytes));
                byConfig.put(ByteBuffer.wrap(configBytes.clone()), d);
            }
            lastRef = configBytes;
            last = d;
            return d;
        }
    }

    static String hex(byte[] bytes, int offset, int length) {
        char[] digits = "0123456789abcdef".toCharArray();
        char[] out = new char[2 * length];
        for (int i = 0; i < length; i++) {
            int b = bytes[offset + i] & 0xff;
            out[2 * i] = digits[b >> 4];
            out[2 * i + 1] = digits[b & 0x0f];
        }
        return new String(out);
    }

    /** The parsed config literal: MAGIC, then handle, column, label, tails..., each as u32 length || bytes. */
    static final class Config {
        final String handle;
        final String column;
        final String label;
        final byte[][] tails;

        private Config(String handle, String column, String label, byte[][] tails) {
            this.handle = handle;
            this.column = column;
            this.label = label;
            this.tails = tails;
        }

        static Config parse(byte[] raw) {
            if (raw == null || raw.length < MAGIC.length || !Arrays.equals(Arrays.copyOf(raw, MAGIC.length), MAGIC)) {
                throw new FastPathException("ConfigurationError", "the fast path's decrypt function was called "
                        + "with a config it did not make");
            }
            ByteBuffer buf = ByteBuffer.wrap(raw, MAGIC.length, raw.length - MAGIC.length);
            java.util.List<byte[]> fields = new java.util.ArrayList<>();
            while (buf.remaining() >= 4) {
                int n = buf.getInt();
                if (n < 0 || n > buf.remaining()) {
                    throw new FastPathException("ConfigurationError", "a corrupt fast-path config");
                }
                byte[] field = new byte[n];
                buf.get(field);
                fields.add(field);
            }
            if (fields.size() < 4 || buf.hasRemaining()) {
                throw new FastPathException("ConfigurationError", "a corrupt fast-path config");
            }
            return new Config(new String(fields.get(0), StandardCharsets.UTF_8),
                    new String(fields.get(1), StandardCharsets.UTF_8), new String(fields.get(2), StandardCharsets.UTF_8),
                    fields.subList(3, fields.size()).toArray(new byte[0][]));
        }

        /** "column 'c', file f, label" for messages. */
        String at() {
            StringBuilder sb = new StringBuilder("column '").append(column).append('\'');
            String file = InputFileBlockHolder.getInputFilePath().toString();
            if (!file.isEmpty()) {
                sb.append(", file ").append(file);
            }
            if (!label.isEmpty()) {
                sb.append(", ").append(label);
            }
            return sb.toString();
        }
    }
}
