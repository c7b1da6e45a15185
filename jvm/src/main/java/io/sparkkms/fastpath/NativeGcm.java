package io.sparkkms.fastpath;

import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;

/**
 * AES-256-GCM over JNI (jvm/src/main/c/sparkkms_gcm.c: libsodium's AES-GCM when the machine has it, else
 * OpenSSL EVP; spark_kms/crypto/_gcm_backend.h). The shared library travels inside
 * the jar ({@code io/sparkkms/fastpath/native/libsparkkms_gcm.so}); it is copied to a private temporary file,
 * loaded and deleted. When it cannot load (another OS or architecture, no libcrypto), {@link #available()} is
 * false and the fast path uses JCE. The system property {@code sparkkms.fastpath.cipher=jce} forces JCE.
 */
public final class NativeGcm {
    private static final String RESOURCE = "/io/sparkkms/fastpath/native/libsparkkms_gcm.so";
    private static volatile String loadError = ""; // before AVAILABLE: load() sets it
    private static final boolean AVAILABLE = load();

    private NativeGcm() {}

    /** Whether the shared library loaded (the write side's {@code NativeGcmEncrypt} binds to it too). */
    public static boolean available() {
        return AVAILABLE;
    }

    /** Why the library did not load ("" when it did). */
    public static String loadError() {
        return loadError;
    }

    private static boolean load() {
        if ("jce".equalsIgnoreCase(System.getProperty("sparkkms.fastpath.cipher", ""))) {
            loadError = "disabled by sparkkms.fastpath.cipher=jce";
            return false;
        }
        try (InputStream in = NativeGcm.class.getResourceAsStream(RESOURCE)) {
            if (in == null) {
                loadError = "the jar holds no native library";
                return false;
            }
            Path file = Files.createTempFile("sparkkms_gcm", ".so",
                    PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rwx------")));
            try {
                Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
                System.load(file.toAbsolutePath().toString());
            } finally {
                Files.deleteIfExists(file);
            }
            return true;
        } catch (Throwable t) { // UnsatisfiedLinkError, IOException, SecurityException
            loadError = t.getClass().getSimpleName() + ": " + t.getMessage();
            return false;
        }
    }

    /** Which AES-GCM implementation the native contexts use: "libsodium <version>[ (bundled)]" or "openssl". */
    public static native String backend();

    /** A context keyed with {@code key} (32 bytes), or 0 when the library refuses. */
    static native long newContext(byte[] key);

    static native void freeContext(long context);

    /** 1: authentic (plaintext in out), 0: the tag does not verify, -1: bad lengths or a failure of the library. */
    static native int decrypt(long context, byte[] cell, byte[] tail, byte[] out);

    /**
     * Decrypts cells {@code [0, n)} of a column batch in one call (sparkkms_gcm.c): cell i is {@code lens[i]}
     * bytes of {@code in} at {@code offs[i]}, decrypted with {@code contexts[keyIndex[i]]} into {@code out} at
     * {@code outOffs[i]}, when {@code keyIndex[i] >= 0} and {@code status[i] != 1}; {@code status[i]} becomes 1
     * (authentic), 0 (tag does not verify) or -1 (bad bounds, a failure of the library). Returns the authentic count, or
     * -1 when the arrays do not fit together.
     */
    static native int decryptBatch(long[] contexts, int[] keyIndex, byte[] in, int[] offs, int[] lens, int n,
            byte[] tail, byte[] out, int[] outOffs, byte[] status);
}
