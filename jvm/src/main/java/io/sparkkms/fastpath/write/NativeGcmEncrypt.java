package io.sparkkms.fastpath.write;

import io.sparkkms.fastpath.NativeGcm;

/**
 * AES-256-GCM cell encryption over JNI (jvm/src/main/c/sparkkms_gcm_enc.c: libsodium, else OpenSSL EVP; linked into the
 * fast path's shared library {@code io/sparkkms/fastpath/native/libsparkkms_gcm.so} inside the jar). The library is
 * the read side's, loaded once by {@link NativeGcm}; this class only binds its encrypt symbols. When it cannot load,
 * {@link #available()} is false and {@link TaskEncryptor} uses JCE; {@code sparkkms.fastpath.cipher=jce} forces JCE.
 */
final class NativeGcmEncrypt {
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
        if (!NativeGcm.available()) { // sparkkms.fastpath.cipher=jce, no library in the jar, no libcrypto...
            loadError = NativeGcm.loadError();
            return false;
        }
        try {
            // The library may predate the encrypt half: probe a symbol now, not in the middle of a task.
            long ctx = newContext(new byte[32]);
            if (ctx == 0) {
                loadError = "the native library refused an AES-256-GCM context";
                return false;
            }
            freeContext(ctx);
            return true;
        } catch (Throwable t) { // UnsatisfiedLinkError
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
