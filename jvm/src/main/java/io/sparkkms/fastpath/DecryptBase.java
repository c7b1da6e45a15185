package io.sparkkms.fastpath;

import java.io.Serializable;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import org.apache.spark.TaskContext;
import org.apache.spark.rdd.InputFileBlockHolder;
import org.apache.spark.util.TaskCompletionListener;

/**
 * The body of the fast path's decrypt UDFs: {@code f(cell binary, config binary)}. The config (a binary literal
 * built by {@code spark_kms.spark.fastpath}) holds the key handle, the column name, a label for messages and the
 * AAD tails to try ({@code u16 len(column) || column || context}, docs/FORMAT.md section 3) -- never key bytes.
 * Each task keeps one cipher per data key and frees them (wiping OpenSSL's key schedules) when it completes.
 */
abstract class DecryptBase implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final byte[] MAGIC = "SKF1".getBytes(StandardCharsets.US_ASCII);
    private static final int GCM_OVERHEAD = DekCipher.HEADER + DekCipher.NONCE + DekCipher.TAG;
    private static final int MAX_CELL = Integer.MAX_VALUE - 64;

    private transient byte[] configRef;
    private transient Config config;
    private transient Map<String, DekCipher> ciphers;
    private transient boolean listening;

    /** The plaintext bytes of {@code cell} (null stays null). */
    protected final synchronized byte[] plain(byte[] cell, byte[] configBytes) {
        if (cell == null) {
            return null;
        }
        Config cfg = configRef == configBytes ? config : configOf(configBytes);  // same literal: same array
        if (cell.length < DekCipher.HEADER) {
            throw error("MalformedCellError", "cell of " + cell.length + " bytes is shorter than the 9-byte header ("
                    + cfg.at() + ")");
        }
        int byte0 = cell[0] & 0xff;
        if ((byte0 >> 4) != 1) {
            throw error("UnknownFormatVersionError", "cell format version " + (byte0 >> 4) + " is not supported "
                    + "(this release reads cells of version 1) (" + cfg.at() + ")");
        }
        int algorithm = byte0 & 0x0f;
        if (algorithm == 3) {
            throw error("MalformedCellError", "a blind-index cell (HMAC_SHA256_128) is one-way, not decryptable, at "
                    + cfg.at());
        }
        if (algorithm != 1) {
            String what = algorithm == 2 ? "an AES_256_SIV cell, which the JVM fast path does not decrypt"
                    : "unknown algorithm id 0x" + Integer.toHexString(algorithm);
            throw error(algorithm == 2 ? "DecryptionError" : "MalformedCellError",
                    "cell names " + what + " at " + cfg.at() + (algorithm == 2 ? ": read with fast_path=False" : ""));
        }
        if (cell.length < GCM_OVERHEAD) {
            throw error("MalformedCellError", "AES_256_GCM_IV12_TAG16 cell of " + cell.length + " bytes is shorter "
                    + "than the 37-byte minimum at " + cfg.at());
        }
        String dekId = hex(cell, 1, 8);
        DekCipher cipher = cipherFor(dekId, cfg);
        byte[] out = new byte[cell.length - GCM_OVERHEAD];
        for (byte[] tail : cfg.tails) {
            if (cipher.decrypt(cell, tail, out) == 1) {
                return out;
            }
        }
        throw error("DecryptionError", "authentication failed for DEK " + dekId + " at " + cfg.at() + ": the key "
                + "table's column spec does not match the cells, or the cell was tampered, moved from another "
                + "column or row, or is under another key");
    }

    private Config configOf(byte[] configBytes) {
        Config cfg = configRef != null && Arrays.equals(configRef, configBytes) ? config : Config.parse(configBytes);
        configRef = configBytes;
        config = cfg;
        return cfg;
    }

    private DekCipher cipherFor(String dekId, Config cfg) {
        if (ciphers == null) {
            ciphers = new HashMap<>();
        }
        DekCipher cipher = ciphers.get(dekId);
        if (cipher == null) {
            byte[] key = ExecutorKeys.keysFor(cfg.handle, cfg.column).get(dekId);
            if (key == null) {
                throw error("UnknownDataKeyError", "unknown DEK " + dekId + " (not in the key table) at " + cfg.at());
            }
            cipher = DekCipher.of(key);
            ciphers.put(dekId, cipher);
            listen();
        }
        return cipher;
    }

    private void listen() {
        if (listening) {
            return;
        }
        TaskContext task = TaskContext.get();
        if (task != null) {
            task.addTaskCompletionListener((TaskCompletionListener) context -> close());
            listening = true;
        }
    }

    private synchronized void close() {
        if (ciphers != null) {
            ciphers.values().forEach(DekCipher::close);
            ciphers.clear();
        }
        listening = false;
    }

    private static FastPathException error(String errorClass, String message) {
        return new FastPathException(errorClass, message);
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
