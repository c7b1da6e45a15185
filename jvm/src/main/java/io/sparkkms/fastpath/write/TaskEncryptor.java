package io.sparkkms.fastpath.write;

import io.sparkkms.fastpath.NativeGcm;

import java.security.SecureRandom;
import java.util.Arrays;
import java.util.concurrent.ConcurrentHashMap;

import javax.crypto.Cipher;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;

import io.sparkkms.fastpath.FastPathException;
import org.apache.spark.TaskContext;
import org.apache.spark.util.TaskCompletionListener;

/**
 * The AES-256-GCM encryptor of one write task attempt (docs/FORMAT.md sections 2.1, 3, 4): one fresh data key
 * from the write's {@link WriteKeyPool}, a 4-byte salt from {@link SecureRandom}, a counter from 0 shared by every
 * column of the task, one OpenSSL context (JCE where the native library cannot load). Created on the first use in
 * a task attempt (the first cell, or the first Parquet file the task opens), kept by task attempt id, closed --
 * context freed, key zeroed -- when the task ends (a {@link TaskCompletionListener}, failures included).
 */
public final class TaskEncryptor implements AutoCloseable {
    static final int HEADER = 9;
    static final int NONCE = 12;
    static final int TAG = 16;
    static final int OVERHEAD = HEADER + NONCE + TAG;
    static final byte GCM_FORMAT_BYTE = 0x11;
    /** FORMAT.md section 4: DEFAULT_MAX_CELLS_PER_DEK = 2^28 cells per data key. */
    static final long MAX_CELLS = Long.getLong("sparkkms.fastpath.maxCellsPerDek", 1L << 28);

    private static final ConcurrentHashMap<Long, TaskEncryptor> BY_TASK = new ConcurrentHashMap<>();
    private static final SecureRandom RANDOM = new SecureRandom();

    final String handle;
    final String keyTable;
    private final byte[] prefix = new byte[HEADER + 4]; // header || salt
    private long counter;
    private long context;
    private byte[] key;
    private SecretKeySpec spec;
    private Cipher cipher;
    private volatile boolean closed;

    private TaskEncryptor(String handle, WriteKeyPool.PooledDek dek) {
        this.handle = handle;
        this.keyTable = dek.keyTable;
        prefix[0] = GCM_FORMAT_BYTE;
        System.arraycopy(dek.dekId, 0, prefix, 1, 8);
        byte[] salt = new byte[4];
        RANDOM.nextBytes(salt);
        System.arraycopy(salt, 0, prefix, HEADER, 4);
        if (NativeGcmEncrypt.available()) {
            context = NativeGcmEncrypt.newContext(dek.key);
        }
        if (context == 0) {
            key = dek.key.clone();
            spec = new SecretKeySpec(key, "AES");
            try {
                cipher = Cipher.getInstance("AES/GCM/NoPadding");
            } catch (java.security.GeneralSecurityException e) {
                throw new IllegalStateException("no AES/GCM/NoPadding in this JVM", e);
            }
        }
        dek.wipe();
    }

    /** Which implementation this JVM encrypts with: "libsodium <version>[ (bundled)]", "openssl" or "jce (reason)". */
    public static String implementation() {
        return NativeGcmEncrypt.available() ? NativeGcm.backend() : "jce (" + NativeGcmEncrypt.loadError() + ")";
    }

    /** The encryptor of the running task attempt for the write {@code handle}, made (one key taken) on first use. */
    public static TaskEncryptor forCurrentTask(String handle) {
        TaskContext tc = TaskContext.get();
        if (tc == null) {
            throw new FastPathException("ConfigurationError", "spark_kms_encrypt runs inside Spark tasks only");
        }
        long id = tc.taskAttemptId();
        TaskEncryptor enc = BY_TASK.get(id);
        if (enc != null) {
            if (!enc.handle.equals(handle)) {
                throw new FastPathException("ConfigurationError", "one task writes two JVM-path writes at once");
            }
            return enc;
        }
        enc = new TaskEncryptor(handle, WriteKeyPool.takeForTask(handle));
        BY_TASK.put(id, enc);
        tc.addTaskCompletionListener(new TaskCompletionListener() {
            @Override
            public void onTaskCompletion(TaskContext context) {
                TaskEncryptor done = BY_TASK.remove(id);
                if (done != null) {
                    done.close();
                }
            }
        });
        return enc;
    }

    /** The footer key table (canonical JSON) of the files this task writes. */
    public String keyTable() {
        return keyTable;
    }

    /** The GCM cell of {@code in[off, off + len)}; {@code tail} = u16 len(column) || column || context. */
    public byte[] encrypt(byte[] in, int off, int len, byte[] tail, String column) {
        if (closed) {
            throw new FastPathException("JobError", "column '" + column + "': the task's encryptor is closed");
        }
        if (counter >= MAX_CELLS) {
            throw new FastPathException("KeyUsageLimitError", "column '" + column + "': one write task encrypted more "
                    + "than " + MAX_CELLS + " cells under one data key (the JVM write path does not roll over): "
                    + "repartition the DataFrame into more tasks, or write with fast_path=False");
        }
        byte[] out = new byte[len + OVERHEAD];
        System.arraycopy(prefix, 0, out, 0, prefix.length);
        long c = counter++;
        for (int i = 0; i < 8; i++) {
            out[HEADER + 4 + i] = (byte) (c >>> (56 - 8 * i));
        }
        if (context != 0) {
            if (NativeGcmEncrypt.encrypt(context, in, off, len, tail, out) != 1) {
                throw new IllegalStateException("OpenSSL failed to encrypt a cell of column '" + column + "'");
            }
            return out;
        }
        try {
            cipher.init(Cipher.ENCRYPT_MODE, spec, new GCMParameterSpec(TAG * 8, out, HEADER, NONCE));
            cipher.updateAAD(out, 0, HEADER);
            cipher.updateAAD(tail);
            cipher.doFinal(in, off, len, out, HEADER + NONCE);
            return out;
        } catch (java.security.GeneralSecurityException e) {
            throw new IllegalStateException("JCE failed to encrypt a cell of column '" + column + "': "
                    + e.getClass().getSimpleName());
        }
    }

    /** How many cells this encryptor sealed. */
    public long cells() {
        return counter;
    }

    @Override
    public synchronized void close() {
        closed = true;
        if (context != 0) {
            NativeGcmEncrypt.freeContext(context);
            context = 0;
        }
        if (key != null) {
            Arrays.fill(key, (byte) 0); // SecretKeySpec keeps its own copy, freed not zeroed
            key = null;
        }
    }
}
