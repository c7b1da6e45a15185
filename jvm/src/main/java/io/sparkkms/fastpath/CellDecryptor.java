package io.sparkkms.fastpath;

import java.nio.ByteBuffer;
import java.util.Arrays;
import java.util.HashMap;

import org.apache.spark.TaskContext;
import org.apache.spark.sql.execution.vectorized.WritableColumnVector;
import org.apache.spark.sql.vectorized.ColumnVector;
import org.apache.spark.util.TaskCompletionListener;

/**
 * The decryption state of one config (a column of one read) in one thread (a task): one cipher per data key,
 * found from the cell's 8-byte DEK id compared as a long with the previous cell's (no String per cell), freed
 * (OpenSSL wipes the key schedule) when the task completes. Cells one at a time ({@link #plain}, the row path)
 * or a column batch in one JNI call ({@link #decryptColumn}, the columnar path). Both raise the same
 * {@link FastPathException}s, naming the column and the file. Not thread-safe: one owner thread.
 */
final class CellDecryptor implements AutoCloseable {
    static final int GCM_OVERHEAD = DekCipher.HEADER + DekCipher.NONCE + DekCipher.TAG;

    final DecryptBase.Config cfg;
    final Thread owner = Thread.currentThread();
    private final HashMap<Long, Integer> index = new HashMap<>();
    private DekCipher[] ciphers = new DekCipher[4];
    private long[] contexts = new long[4];
    private int count;
    private boolean allNative = true;
    private long lastId;
    private int lastIndex = -1;
    // the batch path's scratch arrays, grown as needed
    private int[] offs = new int[0];
    private int[] lens = new int[0];
    private int[] keyIndex = new int[0];
    private byte[] status = new byte[0];
    private byte[] packed = new byte[0];

    private boolean listening;

    CellDecryptor(DecryptBase.Config cfg) {
        this.cfg = cfg;
    }

    /** The plaintext of one cell (not null). */
    byte[] plain(byte[] cell) {
        FastPathException bad = headerError(cell, 0, cell.length);
        if (bad != null) {
            throw bad;
        }
        DekCipher cipher = ciphers[keyIndex(cell, 0)];
        byte[] out = new byte[cell.length - GCM_OVERHEAD];
        for (byte[] tail : cfg.tails) {
            if (cipher.decrypt(cell, tail, out) == 1) {
                return out;
            }
        }
        throw authError(cell, 0);
    }

    /**
     * Decrypts the first {@code n} cells of {@code cells} (binary, nulls stay null) into {@code dst}. On-heap
     * and off-heap Parquet vectors without a dictionary hand over their byte range as is (on-heap: no copy);
     * others (dictionary-encoded pages, other vectors) cell by cell through {@code getBinary}.
     */
    void decryptColumn(ColumnVector cells, int n, DecryptedVector dst) {
        grow(n);
        byte[] in;
        if (cells instanceof WritableColumnVector && !((WritableColumnVector) cells).hasDictionary()) {
            WritableColumnVector w = (WritableColumnVector) cells;
            int lo = Integer.MAX_VALUE;
            int hi = 0;
            for (int i = 0; i < n; i++) {
                if (w.isNullAt(i)) {
                    lens[i] = -1;
                } else {
                    int o = w.getArrayOffset(i);
                    int l = w.getArrayLength(i);
                    offs[i] = o;
                    lens[i] = l;
                    lo = Math.min(lo, o);
                    hi = Math.max(hi, o + l);
                }
            }
            if (lo >= hi) {
                in = packed;
            } else {
                ByteBuffer bytes = w.arrayData().getByteBuffer(lo, hi - lo);
                if (bytes.hasArray()) {
                    in = bytes.array();
                    int shift = bytes.arrayOffset() + bytes.position() - lo;
                    if (shift != 0) {
                        for (int i = 0; i < n; i++) {
                            offs[i] += shift;
                        }
                    }
                } else {
                    in = w.arrayData().getBytes(lo, hi - lo);
                    for (int i = 0; i < n; i++) {
                        offs[i] -= lo;
                    }
                }
            }
        } else {
            int total = 0;
            for (int i = 0; i < n; i++) {
                if (cells.isNullAt(i)) {
                    lens[i] = -1;
                    continue;
                }
                byte[] cell = cells.getBinary(i);
                if (packed.length - total < cell.length) {
                    packed = Arrays.copyOf(packed, Math.max(packed.length * 2, total + cell.length));
                }
                System.arraycopy(cell, 0, packed, total, cell.length);
                offs[i] = total;
                lens[i] = cell.length;
                total += cell.length;
            }
            in = packed;
        }
        decrypt(in, n, dst);
    }

    /** Cells {@code i < n} at {@code in[offs[i]]}, {@code lens[i]} bytes ({@code -1}: null), into dst. */
    private void decrypt(byte[] in, int n, DecryptedVector dst) {
        dst.reset(n);
        int[] outOffs = dst.offsets;
        int[] outLens = dst.lengths;
        int total = 0;
        int stop = n;
        int cells = 0;
        FastPathException pending = null;
        for (int i = 0; i < n; i++) {
            int len = lens[i];
            keyIndex[i] = -1;
            status[i] = 0;
            if (len < 0) {
                outLens[i] = -1;
                continue;
            }
            FastPathException bad = headerError(in, offs[i], len);
            if (bad == null) {
                try {
                    keyIndex[i] = keyIndex(in, offs[i]);
                } catch (FastPathException e) {
                    bad = e;
                }
            }
            if (bad != null) { // the first bad cell in row order: decrypt the cells before it, then raise
                pending = bad;
                stop = i;
                break;
            }
            outOffs[i] = total;
            outLens[i] = len - GCM_OVERHEAD;
            total += len - GCM_OVERHEAD;
            cells++;
        }
        byte[] out = dst.data(total);
        int ok = 0;
        for (int t = 0; t < cfg.tails.length && ok < cells; t++) {
            ok += run(cfg.tails[t], in, stop, out, outOffs);
        }
        if (ok < cells) {
            for (int i = 0; i < stop; i++) {
                if (keyIndex[i] >= 0 && status[i] != 1) {
                    if (status[i] < 0) {
                        throw new IllegalStateException("OpenSSL failed to decrypt a cell");
                    }
                    throw authError(in, offs[i]);
                }
            }
        }
        if (pending != null) {
            throw pending;
        }
    }

    /** One pass over the cells not yet authentic with one AAD tail; how many became authentic. */
    private int run(byte[] tail, byte[] in, int n, byte[] out, int[] outOffs) {
        if (allNative) {
            int rc = NativeGcm.decryptBatch(contexts, keyIndex, in, offs, lens, n, tail, out, outOffs, status);
            if (rc < 0) {
                throw new IllegalStateException("OpenSSL failed to decrypt a cell batch");
            }
            return rc;
        }
        int ok = 0;
        for (int i = 0; i < n; i++) {
            if (keyIndex[i] >= 0 && status[i] != 1) {
                status[i] = (byte) ciphers[keyIndex[i]].decrypt(in, offs[i], lens[i], tail, out, outOffs[i]);
                ok += status[i] == 1 ? 1 : 0;
            }
        }
        return ok;
    }

    private void grow(int n) {
        if (offs.length < n) {
            offs = new int[n];
            lens = new int[n];
            keyIndex = new int[n];
            status = new byte[n];
        }
    }

    /** The index of the cipher of the cell at {@code b[off]} (its header checked): cached, else made. */
    private int keyIndex(byte[] b, int off) {
        long id = 0;
        for (int i = 1; i <= 8; i++) {
            id = (id << 8) | (b[off + i] & 0xff);
        }
        if (lastIndex >= 0 && id == lastId) {
            return lastIndex;
        }
        Integer k = index.get(id);
        if (k == null) {
            k = newCipher(id, DecryptBase.hex(b, off + 1, 8));
        }
        lastId = id;
        lastIndex = k;
        return k;
    }

    private int newCipher(long id, String dekId) {
        byte[] key = ExecutorKeys.keysFor(cfg.handle, cfg.column).get(dekId);
        if (key == null) {
            throw new FastPathException("UnknownDataKeyError", "unknown DEK " + dekId + " (not in the key table) at "
                    + cfg.at());
        }
        if (!listening) { // free the ciphers when the task ends
            TaskContext task = TaskContext.get();
            if (task != null) {
                task.addTaskCompletionListener((TaskCompletionListener) context -> close());
                listening = true;
            }
        }
        DekCipher cipher = DekCipher.of(key);
        if (count == ciphers.length) {
            ciphers = Arrays.copyOf(ciphers, count * 2);
            contexts = Arrays.copyOf(contexts, count * 2);
        }
        ciphers[count] = cipher;
        contexts[count] = cipher.context();
        allNative &= contexts[count] != 0;
        index.put(id, count);
        return count++;
    }

    /** The error of a cell whose header the fast path does not decrypt, or null (DecryptBase's messages). */
    FastPathException headerError(byte[] b, int off, int len) {
        if (len < DekCipher.HEADER) {
            return new FastPathException("MalformedCellError", "cell of " + len + " bytes is shorter than the 9-byte "
                    + "header (" + cfg.at() + ")");
        }
        int byte0 = b[off] & 0xff;
        if ((byte0 >> 4) != 1) {
            return new FastPathException("UnknownFormatVersionError", "cell format version " + (byte0 >> 4) + " is not "
                    + "supported (this release reads cells of version 1) (" + cfg.at() + ")");
        }
        int algorithm = byte0 & 0x0f;
        if (algorithm == 3) {
            return new FastPathException("MalformedCellError", "a blind-index cell (HMAC_SHA256_128) is one-way, not "
                    + "decryptable, at " + cfg.at());
        }
        if (algorithm != 1) {
            String what = algorithm == 2 ? "an AES_256_SIV cell, which the JVM fast path does not decrypt"
                    : "unknown algorithm id 0x" + Integer.toHexString(algorithm);
            return new FastPathException(algorithm == 2 ? "DecryptionError" : "MalformedCellError",
                    "cell names " + what + " at " + cfg.at() + (algorithm == 2 ? ": read with fast_path=False" : ""));
        }
        if (len < GCM_OVERHEAD) {
            return new FastPathException("MalformedCellError", "AES_256_GCM_IV12_TAG16 cell of " + len + " bytes is "
                    + "shorter than the 37-byte minimum at " + cfg.at());
        }
        return null;
    }

    private FastPathException authError(byte[] b, int off) {
        return new FastPathException("DecryptionError", "authentication failed for DEK " + DecryptBase.hex(b, off + 1, 8)
                + " at " + cfg.at() + ": the key table's column spec does not match the cells, or the cell was "
                + "tampered, moved from another column or row, or is under another key");
    }

    @Override
    public void close() {
        for (int i = 0; i < count; i++) {
            ciphers[i].close();
            ciphers[i] = null;
            contexts[i] = 0;
        }
        count = 0;
        index.clear();
        lastIndex = -1;
        allNative = true;
        listening = false;
    }
}
