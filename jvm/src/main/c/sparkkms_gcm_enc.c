/*
 * JNI half of the spark_kms JVM write path: AES-256-GCM cell encryption through OpenSSL EVP
 * (docs/FORMAT.md sections 2.1 and 3; the same EVP calls as spark_kms/crypto/_fastgcm.c).
 *
 * One EVP_CIPHER_CTX per task (io.sparkkms.fastpath.write.NativeGcmEncrypt): the key schedule is set once,
 * each cell only sets its nonce. Not thread-safe per context; the Java side never shares one between tasks.
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

JNIEXPORT jlong JNICALL Java_io_sparkkms_fastpath_write_NativeGcmEncrypt_newContext(JNIEnv *env, jclass cls,
                                                                                    jbyteArray key) {
    (void)cls;
    if ((*env)->GetArrayLength(env, key) != 32) return 0;
    unsigned char k[32];
    (*env)->GetByteArrayRegion(env, key, 0, 32, (jbyte *)k);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL || EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k, NULL) != 1) {
        if (ctx != NULL) EVP_CIPHER_CTX_free(ctx);
        ctx = NULL;
    }
    volatile unsigned char *p = k;
    for (int i = 0; i < 32; i++) p[i] = 0;
    return (jlong)(intptr_t)ctx;
}

JNIEXPORT void JNICALL Java_io_sparkkms_fastpath_write_NativeGcmEncrypt_freeContext(JNIEnv *env, jclass cls,
                                                                                    jlong handle) {
    (void)env; (void)cls;
    if (handle != 0) EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *)(intptr_t)handle);
}

/*
 * Encrypts in[off, off + len) into out (len + 37 bytes) whose first 21 bytes the caller filled: the 9-byte
 * header and the 12-byte nonce. The AAD is that header followed by tail (u16 len(column) || column || context).
 * Writes the ciphertext at out[21] and the tag after it. Returns 1, or -1 on bad lengths or an OpenSSL failure
 * (out's ciphertext is then zeroed).
 */
JNIEXPORT jint JNICALL Java_io_sparkkms_fastpath_write_NativeGcmEncrypt_encrypt(JNIEnv *env, jclass cls,
                                                                                jlong handle, jbyteArray inArr,
                                                                                jint off, jint len,
                                                                                jbyteArray tailArr,
                                                                                jbyteArray outArr) {
    (void)cls;
    EVP_CIPHER_CTX *ctx = (EVP_CIPHER_CTX *)(intptr_t)handle;
    jsize in_len = (*env)->GetArrayLength(env, inArr);
    jsize tail_len = (*env)->GetArrayLength(env, tailArr);
    jsize out_len = (*env)->GetArrayLength(env, outArr);
    if (ctx == NULL || off < 0 || len < 0 || off > in_len - len || out_len != len + GCM_OVERHEAD) return -1;
    unsigned char *in = (*env)->GetPrimitiveArrayCritical(env, inArr, NULL);
    if (in == NULL) return -1;
    unsigned char *tail = (*env)->GetPrimitiveArrayCritical(env, tailArr, NULL);
    if (tail == NULL) {
        (*env)->ReleasePrimitiveArrayCritical(env, inArr, in, JNI_ABORT);
        return -1;
    }
    unsigned char *out = (*env)->GetPrimitiveArrayCritical(env, outArr, NULL);
    if (out == NULL) {
        (*env)->ReleasePrimitiveArrayCritical(env, tailArr, tail, JNI_ABORT);
        (*env)->ReleasePrimitiveArrayCritical(env, inArr, in, JNI_ABORT);
        return -1;
    }
    int outl = 0, finl = 0, rc = 1;
    unsigned char *ct = out + HEADER_BYTES + NONCE_BYTES;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, out + HEADER_BYTES) != 1
        || EVP_EncryptUpdate(ctx, NULL, &outl, out, HEADER_BYTES) != 1
        || (tail_len > 0 && EVP_EncryptUpdate(ctx, NULL, &outl, tail, (int)tail_len) != 1)
        || (len > 0 && EVP_EncryptUpdate(ctx, ct, &outl, in + off, (int)len) != 1)
        || EVP_EncryptFinal_ex(ctx, ct + len, &finl) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, ct + len) != 1) {
        rc = -1;
        if (len > 0) memset(ct, 0, (size_t)len);
    }
    (*env)->ReleasePrimitiveArrayCritical(env, outArr, out, 0);
    (*env)->ReleasePrimitiveArrayCritical(env, tailArr, tail, JNI_ABORT);
    (*env)->ReleasePrimitiveArrayCritical(env, inArr, in, JNI_ABORT);
    return rc;
}
