/*
 * JNI half of the spark_kms JVM fast path: AES-256-GCM cell decryption (docs/FORMAT.md section 2.1) through
 * spark_kms/crypto/_gcm_backend.h -- libsodium (bundled, else the system's), else OpenSSL EVP -- the same calls as
 * spark_kms/crypto/_fastgcm.c.
 *
 * One context per data key and per task (io.sparkkms.fastpath.NativeGcm): the key schedule is set once, each
 * cell only brings its nonce. Not thread-safe per context; the Java side never shares one. freeContext wipes
 * the key schedule.
 */
#include <jni.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_gcm_backend.h"

#define HEADER_BYTES 9
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define GCM_OVERHEAD (HEADER_BYTES + NONCE_BYTES + TAG_BYTES)

JNIEXPORT jlong JNICALL Java_io_sparkkms_fastpath_NativeGcm_newContext(JNIEnv *env, jclass cls, jbyteArray key) {
    (void)cls;
    if ((*env)->GetArrayLength(env, key) != 32) return 0;
    unsigned char k[32];
    (*env)->GetByteArrayRegion(env, key, 0, 32, (jbyte *)k);
    skg_ctx *ctx = skg_new(k, 0);
    volatile unsigned char *p = k;
    for (int i = 0; i < 32; i++) p[i] = 0;
    return (jlong)(intptr_t)ctx;
}

JNIEXPORT void JNICALL Java_io_sparkkms_fastpath_NativeGcm_freeContext(JNIEnv *env, jclass cls, jlong handle) {
    (void)env; (void)cls;
    if (handle != 0) skg_free((skg_ctx *)(intptr_t)handle);
}

/* Which AES-GCM implementation the contexts use: "libsodium <version>[ (bundled)]" or "openssl". */
JNIEXPORT jstring JNICALL Java_io_sparkkms_fastpath_NativeGcm_backend(JNIEnv *env, jclass cls) {
    (void)cls;
    return (*env)->NewStringUTF(env, skg_backend());
}

/*
 * Decrypts one GCM cell into out (cell length - 37 bytes). The AAD is the cell's 9-byte header followed by
 * tail (u16 len(column) || column || context). Returns 1 when the tag verifies, 0 when it does not (out is
 * then zeroed), -1 on a length mismatch or a failure of the library.
 */
JNIEXPORT jint JNICALL Java_io_sparkkms_fastpath_NativeGcm_decrypt(JNIEnv *env, jclass cls, jlong handle,
                                                                    jbyteArray cellArr, jbyteArray tailArr,
                                                                    jbyteArray outArr) {
    (void)cls;
    skg_ctx *ctx = (skg_ctx *)(intptr_t)handle;
    jsize cell_len = (*env)->GetArrayLength(env, cellArr);
    jsize tail_len = (*env)->GetArrayLength(env, tailArr);
    jsize out_len = (*env)->GetArrayLength(env, outArr);
    if (ctx == NULL || cell_len < GCM_OVERHEAD || out_len != cell_len - GCM_OVERHEAD) return -1;
    int n = (int)out_len;
    /* The AAD in one buffer: the cell's header, then the tail (copied before the critical section). */
    unsigned char stack_aad[SKG_AAD_STACK];
    unsigned char *aad = skg_aad_buffer(stack_aad, (size_t)HEADER_BYTES + (size_t)tail_len);
    if (aad == NULL) return -1;
    (*env)->GetByteArrayRegion(env, tailArr, 0, tail_len, (jbyte *)(aad + HEADER_BYTES));
    unsigned char *cell = (*env)->GetPrimitiveArrayCritical(env, cellArr, NULL);
    if (cell == NULL) {
        skg_aad_release(aad, stack_aad);
        return -1;
    }
    unsigned char *out = (*env)->GetPrimitiveArrayCritical(env, outArr, NULL);
    if (out == NULL) {
        (*env)->ReleasePrimitiveArrayCritical(env, cellArr, cell, JNI_ABORT);
        skg_aad_release(aad, stack_aad);
        return -1;
    }
    memcpy(aad, cell, HEADER_BYTES);
    int rc = skg_open(ctx, cell + HEADER_BYTES, aad, (size_t)HEADER_BYTES + (size_t)tail_len,
                      cell + HEADER_BYTES + NONCE_BYTES, (size_t)n, cell + HEADER_BYTES + NONCE_BYTES + n, out);
    (*env)->ReleasePrimitiveArrayCritical(env, outArr, out, 0);
    (*env)->ReleasePrimitiveArrayCritical(env, cellArr, cell, JNI_ABORT);
    skg_aad_release(aad, stack_aad);
    return rc;
}

/*
 * Decrypts a batch of GCM cells of one column in one call (the columnar path, DecryptColumnarExec). in holds
 * the cells, cell i at offs[i] with lens[i] bytes; its plaintext goes to out at out_offs[i] (lens[i] - 37
 * bytes). Cell i is decrypted with contexts[key_index[i]] when key_index[i] >= 0 and status[i] != 1 (so a
 * second call with another tail retries only the cells whose tag did not verify); status[i] is set to 1
 * (authentic), 0 (the tag does not verify: its plaintext bytes are zeroed) or -1 (bad bounds or a failure
 * of the library). The AAD of every cell is its 9-byte header followed by tail. Returns how many cells were
 * authentic in this call, or -1 when the arrays do not fit together.
 */
JNIEXPORT jint JNICALL Java_io_sparkkms_fastpath_NativeGcm_decryptBatch(
    JNIEnv *env, jclass cls, jlongArray ctxArr, jintArray keyArr, jbyteArray inArr, jintArray offArr,
    jintArray lenArr, jint n, jbyteArray tailArr, jbyteArray outArr, jintArray outOffArr, jbyteArray statusArr) {
    (void)cls;
    if (n <= 0) return 0;
    jsize n_ctx = (*env)->GetArrayLength(env, ctxArr);
    jsize in_len = (*env)->GetArrayLength(env, inArr);
    jsize tail_len = (*env)->GetArrayLength(env, tailArr);
    jsize out_len = (*env)->GetArrayLength(env, outArr);
    if ((*env)->GetArrayLength(env, keyArr) < n || (*env)->GetArrayLength(env, offArr) < n
        || (*env)->GetArrayLength(env, lenArr) < n || (*env)->GetArrayLength(env, outOffArr) < n
        || (*env)->GetArrayLength(env, statusArr) < n) return -1;
    /* The AAD of a cell: its header, then the tail, in one buffer. */
    unsigned char *aad = malloc((size_t)HEADER_BYTES + (size_t)tail_len);
    if (aad == NULL) return -1;
    (*env)->GetByteArrayRegion(env, tailArr, 0, tail_len, (jbyte *)(aad + HEADER_BYTES));
    /* Java arrays: copy the small ones out before the critical section (no JNI call may run inside it). */
    jlong *ctxs = (*env)->GetLongArrayElements(env, ctxArr, NULL);
    if (ctxs == NULL) {
        free(aad);
        return -1;
    }
    void *keys = (*env)->GetPrimitiveArrayCritical(env, keyArr, NULL);
    void *offs = (*env)->GetPrimitiveArrayCritical(env, offArr, NULL);
    void *lens = (*env)->GetPrimitiveArrayCritical(env, lenArr, NULL);
    void *out_offs = (*env)->GetPrimitiveArrayCritical(env, outOffArr, NULL);
    void *status = (*env)->GetPrimitiveArrayCritical(env, statusArr, NULL);
    void *in = (*env)->GetPrimitiveArrayCritical(env, inArr, NULL);
    void *out = (*env)->GetPrimitiveArrayCritical(env, outArr, NULL);
    int ok = 0;
    if (keys == NULL || offs == NULL || lens == NULL || out_offs == NULL || status == NULL || in == NULL
        || out == NULL) {
        ok = -1;
    } else {
        const jint *key_index = keys, *off = offs, *len = lens, *out_off = out_offs;
        jbyte *st = status;
        const unsigned char *src = in;
        int aad_len = HEADER_BYTES + (int)tail_len;
        unsigned char *dst = out;
        for (jint i = 0; i < n; i++) {
            jint k = key_index[i];
            if (k < 0 || st[i] == 1) continue;
            jint cl = len[i], co = off[i], oo = out_off[i];
            if (k >= n_ctx || ctxs[k] == 0 || cl < GCM_OVERHEAD || co < 0 || co > in_len - cl || oo < 0
                || oo > out_len - (cl - GCM_OVERHEAD)) {
                st[i] = -1;
                continue;
            }
            const unsigned char *cell = src + co;
            int m = cl - GCM_OVERHEAD;
            memcpy(aad, cell, HEADER_BYTES);
            int rc = skg_open((skg_ctx *)(intptr_t)ctxs[k], cell + HEADER_BYTES, aad, (size_t)aad_len,
                              cell + HEADER_BYTES + NONCE_BYTES, (size_t)m, cell + HEADER_BYTES + NONCE_BYTES + m,
                              dst + oo); /* plaintext zeroed unless authentic */
            st[i] = (jbyte)rc;
            if (rc == 1) ok++;
        }
    }
    if (out != NULL) (*env)->ReleasePrimitiveArrayCritical(env, outArr, out, 0);
    if (in != NULL) (*env)->ReleasePrimitiveArrayCritical(env, inArr, in, JNI_ABORT);
    if (status != NULL) (*env)->ReleasePrimitiveArrayCritical(env, statusArr, status, 0);
    if (out_offs != NULL) (*env)->ReleasePrimitiveArrayCritical(env, outOffArr, out_offs, JNI_ABORT);
    if (lens != NULL) (*env)->ReleasePrimitiveArrayCritical(env, lenArr, lens, JNI_ABORT);
    if (offs != NULL) (*env)->ReleasePrimitiveArrayCritical(env, offArr, offs, JNI_ABORT);
    if (keys != NULL) (*env)->ReleasePrimitiveArrayCritical(env, keyArr, keys, JNI_ABORT);
    (*env)->ReleaseLongArrayElements(env, ctxArr, ctxs, JNI_ABORT);
    free(aad);
    return ok;
}
