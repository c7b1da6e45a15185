/*
 * JNI half of the spark_kms JVM write path: AES-256-GCM cell encryption (docs/FORMAT.md sections 2.1 and 3)
 * through spark_kms/crypto/_gcm_backend.h -- libsodium (bundled, else the system's), else OpenSSL EVP -- the same
 * calls as spark_kms/crypto/_fastgcm.c.
 *
 * One context per task (io.sparkkms.fastpath.write.NativeGcmEncrypt): the key schedule is set once, each cell
 * only brings its nonce. Not thread-safe per context; the Java side never shares one between tasks.
 * freeContext wipes the key schedule.
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

JNIEXPORT jlong JNICALL Java_io_sparkkms_fastpath_write_NativeGcmEncrypt_newContext(JNIEnv *env, jclass cls,
                                                                                    jbyteArray key) {
    (void)cls;
    if ((*env)->GetArrayLength(env, key) != 32) return 0;
    unsigned char k[32];
    (*env)->GetByteArrayRegion(env, key, 0, 32, (jbyte *)k);
    skg_ctx *ctx = skg_new(k, 1);
    volatile unsigned char *p = k;
    for (int i = 0; i < 32; i++) p[i] = 0;
    return (jlong)(intptr_t)ctx;
}

JNIEXPORT void JNICALL Java_io_sparkkms_fastpath_write_NativeGcmEncrypt_freeContext(JNIEnv *env, jclass cls,
                                                                                    jlong handle) {
    (void)env; (void)cls;
    if (handle != 0) skg_free((skg_ctx *)(intptr_t)handle);
}

/*
 * Encrypts in[off, off + len) into out (len + 37 bytes) whose first 21 bytes the caller filled: the 9-byte
 * header and the 12-byte nonce. The AAD is that header followed by tail (u16 len(column) || column || context).
 * Writes the ciphertext at out[21] and the tag after it. Returns 1, or -1 on bad lengths or a failure of the
 * library (out's ciphertext is then zeroed).
 */
JNIEXPORT jint JNICALL Java_io_sparkkms_fastpath_write_NativeGcmEncrypt_encrypt(JNIEnv *env, jclass cls,
                                                                                jlong handle, jbyteArray inArr,
                                                                                jint off, jint len,
                                                                                jbyteArray tailArr,
                                                                                jbyteArray outArr) {
    (void)cls;
    skg_ctx *ctx = (skg_ctx *)(intptr_t)handle;
    jsize in_len = (*env)->GetArrayLength(env, inArr);
    jsize tail_len = (*env)->GetArrayLength(env, tailArr);
    jsize out_len = (*env)->GetArrayLength(env, outArr);
    if (ctx == NULL || off < 0 || len < 0 || off > in_len - len || out_len != len + GCM_OVERHEAD) return -1;
    /* The AAD in one buffer: the header the caller wrote, then the tail (copied before the critical section). */
    unsigned char stack_aad[SKG_AAD_STACK];
    unsigned char *aad = skg_aad_buffer(stack_aad, (size_t)HEADER_BYTES + (size_t)tail_len);
    if (aad == NULL) return -1;
    (*env)->GetByteArrayRegion(env, outArr, 0, HEADER_BYTES, (jbyte *)aad);
    (*env)->GetByteArrayRegion(env, tailArr, 0, tail_len, (jbyte *)(aad + HEADER_BYTES));
    unsigned char *in = (*env)->GetPrimitiveArrayCritical(env, inArr, NULL);
    if (in == NULL) {
        skg_aad_release(aad, stack_aad);
        return -1;
    }
    unsigned char *out = (*env)->GetPrimitiveArrayCritical(env, outArr, NULL);
    if (out == NULL) {
        (*env)->ReleasePrimitiveArrayCritical(env, inArr, in, JNI_ABORT);
        skg_aad_release(aad, stack_aad);
        return -1;
    }
    unsigned char *ct = out + HEADER_BYTES + NONCE_BYTES;
    int rc = skg_seal(ctx, out + HEADER_BYTES, aad, (size_t)HEADER_BYTES + (size_t)tail_len, in + off,
                      (size_t)len, ct, ct + len);
    (*env)->ReleasePrimitiveArrayCritical(env, outArr, out, 0);
    (*env)->ReleasePrimitiveArrayCritical(env, inArr, in, JNI_ABORT);
    skg_aad_release(aad, stack_aad);
    return rc;
}
