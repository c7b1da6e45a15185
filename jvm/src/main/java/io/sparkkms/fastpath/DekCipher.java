package io.sparkkms.fastpath;

import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;

/** The AES-256-GCM decryption of one data key, used by one task (thread) at a time. */
abstract class DekCipher implements AutoCloseable {
    static final int HEADER = 9;
    static final int NONCE = 12;
    static final int TAG = 16;

    /** 1: authentic, 0: the tag does not verify. {@code out} has the cell's plaintext length. */
    abstract int decrypt(byte[] cell, byte[] tail, byte[] out);

    @Override
    public abstract void close();

    static DekCipher of(byte[] key) {
        if (NativeGcm.available()) {
            long ctx = NativeGcm.newContext(key);
            if (ctx != 0) {
                return new Native(ctx);
            }
        }
        return new Jce(key);
    }

    /** Which implementation {@link #of} picks in this JVM: "openssl" or "jce (reason)". */
    static String implementation() {
        return NativeGcm.available() ? "openssl" : "jce (" + NativeGcm.loadError() + ")";
    }

    static final class Native extends DekCipher {
        private long ctx;

        Native(long ctx) {
            this.ctx = ctx;
        }

        @Override
        int decrypt(byte[] cell, byte[] tail, byte[] out) {
            int rc = NativeGcm.decrypt(ctx, cell, tail, out);
            if (rc < 0) {
                throw new IllegalStateException("OpenSSL failed to decrypt a cell");
            }
            return rc;
        }

        @Override
        public void close() {
            if (ctx != 0) {
                NativeGcm.freeContext(ctx);
                ctx = 0;
            }
        }
    }

    /** JCE: one Cipher per key, re-initialised with each cell's nonce. */
    static final class Jce extends DekCipher {
        private final byte[] key;
        private final SecretKeySpec spec;
        private final Cipher cipher;

        Jce(byte[] key) {
            this.key = key.clone();
            this.spec = new SecretKeySpec(this.key, "AES");
            try {
                this.cipher = Cipher.getInstance("AES/GCM/NoPadding");
            } catch (java.security.GeneralSecurityException e) {
                throw new IllegalStateException("no AES/GCM/NoPadding in this JVM", e);
            }
        }

        @Override
        int decrypt(byte[] cell, byte[] tail, byte[] out) {
            try {
                cipher.init(Cipher.DECRYPT_MODE, spec, new GCMParameterSpec(TAG * 8, cell, HEADER, NONCE));
                cipher.updateAAD(cell, 0, HEADER);
                cipher.updateAAD(tail);
                cipher.doFinal(cell, HEADER + NONCE, cell.length - HEADER - NONCE, out, 0);
                return 1;
            } catch (AEADBadTagException e) {
                java.util.Arrays.fill(out, (byte) 0);
                return 0;
            } catch (java.security.GeneralSecurityException e) {
                throw new IllegalStateException("JCE failed to decrypt a cell: " + e.getClass().getSimpleName());
            }
        }

        @Override
        public void close() {
            java.util.Arrays.fill(key, (byte) 0); // SecretKeySpec keeps its own copy, freed not zeroed
        }
    }
}
