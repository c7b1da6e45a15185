/*
 * JNI half of the spark_kms JVM fast path: AES-256-GCM cell decryption through OpenSSL EVP
 * (docs/FORMAT.md section 2.1; the same EVP calls as spark_kms/crypto/_fastgcm.c).
 *
 * One EVP_CIPHER_CTX per data key and per task (io.sparkkms.fastpath.NativeGcm): the key schedule is set
 * once, each cell only sets its nonce. Not thread-safe per context; the Java side never shares one.
 * EVP_CIPHER_CTX_free wipes the key schedule.
 */
#include <jni.h>
#include <stdint.h>
#include <string.h>
#include <openssl/evp.h>

#define HEADER_BYTES 9
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define GCM_OVERHEAD (HEADER_BYTES + NONCE_BYTES + TAG_BYTES)

JNIEXPORT jlong JNICALL Java_io_sparkkms_fastpath_NativeGcm_newContext(JNIEnv *env, jclass cls, jbyteArray key) {
    (void)cls;
    if ((*env)->GetArrayLength(env, key) != 32) return 0;
    unsigned char k[32];
    (*env)->GetByteArrayRegion(env, key, 0, 32, (jbyte *)k);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL || EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k, NULL) != 1) {
        if (ctx != NULL) EVP_CIPHER_CTX_free(ctx);
        ctx = NULL;
    }
    volatile unsigned char *p = k;
    for (int i = 0; i < 32; i++) p[i] = 0;
    return (jlong)(intptr_t)ctx;
}

JNIEXPORT void JNICALL Java_io_sparkkms_fastpath_NativeGcm_freeContext(JNIEnv *env, jclass cls, jlong handle) {
    (void)env; (void)cls;
    if (handle != 0) EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *)(intptr_t)handle);
}

/*
 * Decrypts one GCM cell into out (cell length - 37 bytes). The AAD is the cell's 9-byte header followed by
 * tail (u16 len(column) || column || context). Returns 1 when the tag verifies, 0 when it does not (out is
 * then zeroed), -1 on a length mismatch or an OpenSSL failure.
 */
JNIEXPORT jint JNICALL Java_io_sparkkms_fastpath_NativeGcm_decrypt(JNIEnv *env, jclass cls, jlong handle,
                                                                    jbyteArray cellArr, jbyteArray tailArr,
                                                                    jbyteArray outArr) {
    (void)cls;
    EVP_CIPHER_CTX *ctx = (EVP_CIPHER_CTX *)(intptr_t)handle;
    jsize cell_len = (*env)->GetArrayLength(env, cellArr);
    jsize tail_len = (*env)->GetArrayLength(env, tailArr);
    jsize out_len = (*env)->GetArrayLength(env, outArr);
    if (ctx == NULL || cell_len < GCM_OVERHEAD || out_len != cell_len - GCM_OVERHEAD) return -1;
    int n = (int)out_len;
    unsigned char *cell = (*env)->GetPrimitiveArrayCritical(env, cellArr, NULL);
    if (cell == NULL) return -1;
    unsigned char *tail = (*env)->GetPrimitiveArrayCritical(env, tailArr, NULL);
    if (tail == NULL) {
        (*env)->ReleasePrimitiveArrayCritical(env, cellArr, cell, JNI_ABORT);
        return -1;
    }
    unsigned char *out = (*env)->GetPrimitiveArrayCritical(env, outArr, NULL);
    if (out == NULL) {
        (*env)->ReleasePrimitiveArrayCritical(env, tailArr, tail, JNI_ABORT);
        (*env)->ReleasePrimitiveArrayCritical(env, cellArr, cell, JNI_ABORT);
        return -1;
    }
    int outl = 0, finl = 0, rc;
    unsigned char tag[TAG_BYTES];
    memcpy(tag, cell + HEADER_BYTES + NONCE_BYTES + n, TAG_BYTES);
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, cell + HEADER_BYTES) != 1
        || EVP_DecryptUpdate(ctx, NULL, &outl, cell, HEADER_BYTES) != 1
        || (tail_len > 0 && EVP_DecryptUpdate(ctx, NULL, &outl, tail, (int)tail_len) != 1)
        || (n > 0 && EVP_DecryptUpdate(ctx, out, &outl, cell + HEADER_BYTES + NONCE_BYTES, n) != 1)
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag) != 1) {
        rc = -1;
    } else {
        rc = EVP_DecryptFinal_ex(ctx, out + n, &finl) == 1 ? 1 : 0;
    }
    if (rc != 1 && n > 0) memset(out, 0, (size_t)n);
    (*env)->ReleasePrimitiveArrayCritical(env, outArr, out, 0);
    (*env)->ReleasePrimitiveArrayCritical(env, tailArr, tail, JNI_ABORT);
    (*env)->ReleasePrimitiveArrayCritical(env, cellArr, cell, JNI_ABORT);
    return rc;
}
