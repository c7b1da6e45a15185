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

    /**
     * The cell of {@code length} bytes at {@code in[offset]} into {@code out[outOffset]} (length - 37 bytes):
     * 1 authentic, 0 the tag does not verify (those bytes zeroed).
     */
    abstract int decrypt(byte[] in, int offset, int length, byte[] tail, byte[] out, int outOffset);

    /** The native context of this key, or 0 when it is not a native cipher. */
    long context() {
        return 0L;
    }

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

    /**
     * Which implementation {@link #of} picks in this JVM: "libsodium <version>[ (bundled)]", "openssl" or
     * "jce (reason)".
     */
    static String implementation() {
        return NativeGcm.available() ? NativeGcm.backend() : "jce (" + NativeGcm.loadError() + ")";
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
        int decrypt(byte[] in, int offset, int length, byte[] tail, byte[] out, int outOffset) {
            byte[] status = new byte[1];
            int rc = NativeGcm.decryptBatch(new long[] {ctx}, new int[] {0}, in, new int[] {offset},
                    new int[] {length}, 1, tail, out, new int[] {outOffset}, status);
            if (rc < 0 || status[0] < 0) {
                throw new IllegalStateException("OpenSSL failed to decrypt a cell");
            }
            return status[0];
        }

        @Override
        long context() {
            return ctx;
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
            return decrypt(cell, 0, cell.length, tail, out, 0);
        }

        @Override
        int decrypt(byte[] in, int offset, int length, byte[] tail, byte[] out, int outOffset) {
            try {
                cipher.init(Cipher.DECRYPT_MODE, spec, new GCMParameterSpec(TAG * 8, in, offset + HEADER, NONCE));
                cipher.updateAAD(in, offset, HEADER);
                cipher.updateAAD(tail);
                cipher.doFinal(in, offset + HEADER + NONCE, length - HEADER - NONCE, out, outOffset);
                return 1;
            } catch (AEADBadTagException e) {
                java.util.Arrays.fill(out, outOffset, outOffset + length - HEADER - NONCE - TAG, (byte) 0);
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
