package io.sparkkms.fastpath.write;

import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;

/**
 * AES-256-GCM cell encryption through OpenSSL EVP over JNI (jvm/src/main/c/sparkkms_gcm_enc.c, linked into the
 * fast path's shared library {@code io/sparkkms/fastpath/native/libsparkkms_gcm.so} inside the jar). Loaded like
 * the read side's library: copied to a private temporary file, loaded, deleted. When it cannot load,
 * {@link #available()} is false and {@link TaskEncryptor} uses JCE; {@code sparkkms.fastpath.cipher=jce} forces JCE.
 */
final class NativeGcmEncrypt {
    private static final String RESOURCE = "/io/sparkkms/fastpath/native/libsparkkms_gcm.so";
    private static volatile String loadError = "";
    private static final boolean AVAILABLE = load();

    private NativeGcmEncrypt() {}

    static boolean available() {
        return AVAILABLE;
    }

    static String loadError() {
        return loadError;
    }

    private static boolean load() {
        if ("jce".equalsIgnoreCase(System.getProperty("sparkkms.fastpath.cipher", ""))) {
            loadError = "disabled by sparkkms.fastpath.cipher=jce";
            return false;
        }
        try (InputStream in = NativeGcmEncrypt.class.getResourceAsStream(RESOURCE)) {
            if (in == null) {
                loadError = "the jar holds no native library";
                return false;
            }
            Path file = Files.createTempFile("sparkkms_gcm_enc", ".so",
                    PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rwx------")));
            try {
                Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
                System.load(file.toAbsolutePath().toString());
            } finally {
                Files.deleteIfExists(file);
            }
            // The library may predate the encrypt half: probe a symbol now, not in the middle of a task.
            long ctx = newContext(new byte[32]);
            if (ctx == 0) {
                loadError = "OpenSSL refused an AES-256-GCM context";
                return false;
            }
            freeContext(ctx);
            return true;
        } catch (Throwable t) { // UnsatisfiedLinkError, IOException, SecurityException
            loadError = t.getClass().getSimpleName() + ": " + t.getMessage();
            return false;
        }
    }

    /** An EVP encryption context keyed with {@code key} (32 bytes), or 0 when OpenSSL refuses. */
    static native long newContext(byte[] key);

    static native void freeContext(long context);

    /** 1, or -1 on bad lengths or an OpenSSL failure; see sparkkms_gcm_enc.c. */
    static native int encrypt(long context, byte[] in, int off, int len, byte[] tail, byte[] out);
}
