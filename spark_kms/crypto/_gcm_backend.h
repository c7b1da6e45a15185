/*
 * One AES-256-GCM call per cell, for the native loops of spark_kms: the Python extension
 * (spark_kms/crypto/_fastgcm.c) and the JVM fast path's JNI library (the C files of jvm/src/main/c).
 *
 * Two implementations of the same standard AES-256-GCM (NIST SP 800-38D, 96-bit nonce, 128-bit tag):
 *
 *   libsodium  crypto_aead_aes256gcm_*_afternm over a state that holds the expanded key and the GHASH key
 *              powers, one call per cell, used when crypto_aead_aes256gcm_is_available() says the CPU has
 *              AES-NI and PCLMUL. Two sources, in this order:
 *                bundled  built with -DSKG_SODIUM_BUNDLED and linked with build/libsodium/lib/libsodium.a (the
 *                         pinned libsodium 1.0.20 that `make install` builds from source, its symbols hidden):
 *                         its AES-GCM was rewritten in 1.0.19: 0.6-0.75x 1.0.18's cost per small cell;
 *                system   loaded with dlopen (libsodium.so.26, then .23): no build-time dependency.
 *              Either costs well under half of EVP per small cell (bench/bench_crypto.py, docs/BENCHMARKS.md).
 *   openssl    EVP: one EVP_CIPHER_CTX per key, each cell sets its nonce, the AAD, the update and the tag.
 *
 * All produce and accept the same bytes (tests/crypto/test_gcm_backends.py checks them against each other
 * and against `cryptography`). SPARK_KMS_GCM_BACKEND in a process's environment, read once when the first
 * context is made: "openssl" keeps that process on OpenSSL, "system" skips the bundled libsodium. No key byte
 * is logged; key schedules are wiped (OPENSSL_cleanse) before they are freed.
 *
 * Everything here is static: each shared library that includes this header gets its own copy.
 */
#ifndef SPARK_KMS_GCM_BACKEND_H
#define SPARK_KMS_GCM_BACKEND_H

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define SKG_KEY_BYTES 32
#define SKG_NONCE_BYTES 12
#define SKG_TAG_BYTES 16

/* crypto_aead_aes256gcm_state: 512 opaque bytes aligned to 16 (sodium/crypto_aead_aes256gcm.h). */
typedef struct {
    unsigned char opaque[512];
} __attribute__((aligned(16))) skg_sodium_state;

typedef int (*skg_beforenm_fn)(skg_sodium_state *, const unsigned char *);
typedef int (*skg_open_fn)(unsigned char *m, unsigned char *nsec, const unsigned char *c, unsigned long long clen,
                           const unsigned char *mac, const unsigned char *ad, unsigned long long adlen,
                           const unsigned char *npub, const skg_sodium_state *st);
typedef int (*skg_seal_fn)(unsigned char *c, unsigned char *mac, unsigned long long *maclen,
                           const unsigned char *m, unsigned long long mlen, const unsigned char *ad,
                           unsigned long long adlen, const unsigned char *nsec, const unsigned char *npub,
                           const skg_sodium_state *st);

static struct {
    skg_beforenm_fn beforenm;
    skg_open_fn open;
    skg_seal_fn seal;
    char name[48];
} skg_sodium = {NULL, NULL, NULL, "openssl"};
static pthread_once_t skg_once = PTHREAD_ONCE_INIT;

/* Takes one libsodium's functions when they are all there and its AES-GCM runs on this CPU; 1 when taken. */
static int
skg_take(int (*init)(void), int (*available)(void), size_t (*statebytes)(void), const char *(*version)(void),
         skg_beforenm_fn beforenm, skg_open_fn open, skg_seal_fn seal, const char *suffix)
{
    if (init == NULL || available == NULL || statebytes == NULL || beforenm == NULL || open == NULL
        || seal == NULL || init() < 0 || available() != 1 || statebytes() > sizeof(skg_sodium_state))
        return 0;
    snprintf(skg_sodium.name, sizeof(skg_sodium.name), "libsodium %s%s", version ? version() : "", suffix);
    skg_sodium.beforenm = beforenm;
    skg_sodium.open = open;
    skg_sodium.seal = seal;
    return 1;
}

#ifdef SKG_SODIUM_BUNDLED
/* The pinned libsodium linked into this library (its symbols hidden with -Wl,--exclude-libs,ALL). Declared here
 * rather than through <sodium.h> so that the state is skg_sodium_state: the same 512 aligned bytes. */
int sodium_init(void);
const char *sodium_version_string(void);
int crypto_aead_aes256gcm_is_available(void);
size_t crypto_aead_aes256gcm_statebytes(void);
int crypto_aead_aes256gcm_beforenm(skg_sodium_state *, const unsigned char *);
int crypto_aead_aes256gcm_decrypt_detached_afternm(unsigned char *, unsigned char *, const unsigned char *,
                                                   unsigned long long, const unsigned char *,
                                                   const unsigned char *, unsigned long long,
                                                   const unsigned char *, const skg_sodium_state *);
int crypto_aead_aes256gcm_encrypt_detached_afternm(unsigned char *, unsigned char *, unsigned long long *,
                                                   const unsigned char *, unsigned long long,
                                                   const unsigned char *, unsigned long long,
                                                   const unsigned char *, const unsigned char *,
                                                   const skg_sodium_state *);
#endif

static void
skg_load(void)
{
    const char *want = getenv("SPARK_KMS_GCM_BACKEND");
    if (want != NULL && strcmp(want, "openssl") == 0)
        return;
#ifdef SKG_SODIUM_BUNDLED
    if ((want == NULL || strcmp(want, "system") != 0)
        && skg_take(sodium_init, crypto_aead_aes256gcm_is_available, crypto_aead_aes256gcm_statebytes,
                    sodium_version_string, crypto_aead_aes256gcm_beforenm,
                    crypto_aead_aes256gcm_decrypt_detached_afternm, crypto_aead_aes256gcm_encrypt_detached_afternm,
                    " (bundled)"))
        return;
#endif
    static const char *const names[] = {"libsodium.so.26", "libsodium.so.23", "libsodium.so"};
    void *h = NULL;
    for (size_t i = 0; h == NULL && i < sizeof(names) / sizeof(names[0]); i++)
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        return;
    /* The handle stays open for the life of the process (a few pages): contexts point into it. */
    skg_take((int (*)(void))dlsym(h, "sodium_init"), (int (*)(void))dlsym(h, "crypto_aead_aes256gcm_is_available"),
             (size_t (*)(void))dlsym(h, "crypto_aead_aes256gcm_statebytes"),
             (const char *(*)(void))dlsym(h, "sodium_version_string"),
             (skg_beforenm_fn)dlsym(h, "crypto_aead_aes256gcm_beforenm"),
             (skg_open_fn)dlsym(h, "crypto_aead_aes256gcm_decrypt_detached_afternm"),
             (skg_seal_fn)dlsym(h, "crypto_aead_aes256gcm_encrypt_detached_afternm"), "");
}

/* "libsodium <version>[ (bundled)]" or "openssl": what the contexts made from now on in this process use. */
static inline const char *
skg_backend(void)
{
    pthread_once(&skg_once, skg_load);
    return skg_sodium.name;
}

/* An AAD of n bytes in one buffer (libsodium takes it whole): the caller's SKG_AAD_STACK-byte stack array when n
 * fits, else heap; release it with skg_aad_release. Keeps a per-cell call free of malloc for ordinary AADs. */
#define SKG_AAD_STACK 256

static inline unsigned char *
skg_aad_buffer(unsigned char stack[SKG_AAD_STACK], size_t n)
{
    return n <= SKG_AAD_STACK ? stack : malloc(n);
}

static inline void
skg_aad_release(unsigned char *aad, const unsigned char stack[SKG_AAD_STACK])
{
    if (aad != stack)
        free(aad);
}

typedef struct {
    EVP_CIPHER_CTX *evp;    /* openssl */
    skg_sodium_state *st;   /* libsodium */
} skg_ctx;

/* A context for one key, to encrypt (encrypt != 0) or to decrypt; NULL when it cannot be made. */
static inline skg_ctx *
skg_new(const unsigned char key[SKG_KEY_BYTES], int encrypt)
{
    pthread_once(&skg_once, skg_load);
    skg_ctx *c = calloc(1, sizeof(skg_ctx));
    if (c == NULL)
        return NULL;
    if (skg_sodium.beforenm != NULL) {
        c->st = aligned_alloc(16, sizeof(skg_sodium_state));
        if (c->st != NULL && skg_sodium.beforenm(c->st, key) == 0)
            return c;
        free(c->st);
        free(c);
        return NULL;
    }
    c->evp = EVP_CIPHER_CTX_new();
    int ok = c->evp != NULL
             && (encrypt ? EVP_EncryptInit_ex(c->evp, EVP_aes_256_gcm(), NULL, key, NULL)
                         : EVP_DecryptInit_ex(c->evp, EVP_aes_256_gcm(), NULL, key, NULL))
                    == 1;
    if (ok)
        return c;
    EVP_CIPHER_CTX_free(c->evp);
    free(c);
    return NULL;
}

static inline void
skg_free(skg_ctx *c)
{
    if (c == NULL)
        return;
    if (c->st != NULL) {
        OPENSSL_cleanse(c->st, sizeof(skg_sodium_state)); /* the expanded key and the GHASH key */
        free(c->st);
    }
    EVP_CIPHER_CTX_free(c->evp); /* frees and wipes the key schedule */
    free(c);
}

/*
 * Decrypts n bytes of ciphertext ct into out (n bytes) and checks tag over aad and ct. Returns 1 when the tag
 * verifies, 0 when it does not, -1 on a failure of the library or a length it cannot take; out is zeroed
 * unless 1 is returned. out must be valid for n bytes (any non-NULL pointer when n is 0).
 */
static inline int
skg_open(skg_ctx *c, const unsigned char nonce[SKG_NONCE_BYTES], const unsigned char *aad, size_t aad_len,
         const unsigned char *ct, size_t n, const unsigned char tag[SKG_TAG_BYTES], unsigned char *out)
{
    int rc;
    if (c->st != NULL) {
        rc = skg_sodium.open(out, NULL, ct, n, tag, aad, aad_len, nonce, c->st) == 0 ? 1 : 0;
    }
    else if (n > INT_MAX || aad_len > INT_MAX) {
        rc = -1;
    }
    else {
        int outl = 0, finl = 0;
        unsigned char t[SKG_TAG_BYTES];
        memcpy(t, tag, SKG_TAG_BYTES);
        if (EVP_DecryptInit_ex(c->evp, NULL, NULL, NULL, nonce) != 1
            || EVP_DecryptUpdate(c->evp, NULL, &outl, aad, (int)aad_len) != 1
            || (n > 0 && EVP_DecryptUpdate(c->evp, out, &outl, ct, (int)n) != 1)
            || EVP_CIPHER_CTX_ctrl(c->evp, EVP_CTRL_GCM_SET_TAG, SKG_TAG_BYTES, t) != 1)
            rc = -1;
        else
            rc = EVP_DecryptFinal_ex(c->evp, out + n, &finl) == 1 ? 1 : 0;
    }
    if (rc != 1 && n > 0)
        memset(out, 0, n);
    return rc;
}

/* Encrypts n bytes of pt into ct (n bytes) and writes the tag over aad and ct. Returns 1, or -1 (ct zeroed). */
static inline int
skg_seal(skg_ctx *c, const unsigned char nonce[SKG_NONCE_BYTES], const unsigned char *aad, size_t aad_len,
         const unsigned char *pt, size_t n, unsigned char *ct, unsigned char tag[SKG_TAG_BYTES])
{
    int rc;
    if (c->st != NULL) {
        unsigned long long taglen = 0;
        rc = skg_sodium.seal(ct, tag, &taglen, pt, n, aad, aad_len, NULL, nonce, c->st) == 0
                     && taglen == SKG_TAG_BYTES
                 ? 1
                 : -1;
    }
    else if (n > INT_MAX || aad_len > INT_MAX) {
        rc = -1;
    }
    else {
        int outl = 0, finl = 0;
        rc = EVP_EncryptInit_ex(c->evp, NULL, NULL, NULL, nonce) == 1
                     && EVP_EncryptUpdate(c->evp, NULL, &outl, aad, (int)aad_len) == 1
                     && (n == 0 || EVP_EncryptUpdate(c->evp, ct, &outl, pt, (int)n) == 1)
                     && EVP_EncryptFinal_ex(c->evp, ct + n, &finl) == 1
                     && EVP_CIPHER_CTX_ctrl(c->evp, EVP_CTRL_GCM_GET_TAG, SKG_TAG_BYTES, tag) == 1
                 ? 1
                 : -1;
    }
    if (rc != 1 && n > 0)
        memset(ct, 0, n);
    return rc;
}

#endif
