/*
 * spark_kms.crypto._fastgcm -- batched AES-256-GCM cells over Arrow-style buffers (optional C extension).
 *
 * The cell format is docs/FORMAT.md section 2.1, byte for byte the same as spark_kms/crypto/cell.py:
 *
 *     cell  = 0x11 || dek_id (8) || nonce (12) || ciphertext (n) || tag (16)       (n + 37 bytes)
 *     nonce = salt (4) || u64be(counter)
 *     AAD   = header (cell bytes 0..8) || u16be(len(column_utf8)) || column_utf8 || context
 *
 * Input arrays are described the way Arrow lays out binary/string arrays:
 *     offsets   int32 or int64 (native = little-endian), at least (array_offset + length + 1) entries
 *     data      the value bytes the offsets index into
 *     validity  LSB-first bitmap of at least (array_offset + length) bits, or None (no nulls)
 * and results come back the same way, as new bytes objects with array offset 0. Nulls stay null and consume
 * no counter. No Python object is created per cell.
 *
 * Every length and offset is checked before use (offsets within the data buffer and non-decreasing for
 * each non-null value, output sizes computed up front with overflow checks). Data-dependent problems are
 * returned as a status code and the index of the first cell concerned, never with cell bytes; the Python
 * wrapper (spark_kms/crypto/_native.py) turns them into spark_kms errors. The GIL is released during the
 * crypto loops; the outputs are not yet shared.
 *
 * Py_buffer views pin the input buffers' memory and size, not their contents: a writable buffer (bytearray,
 * numpy, a mutable Arrow buffer) may change during a call, from another thread while the GIL is released, or
 * from __del__ code that the garbage collector runs whenever a Python object is created. Hence: bounds are
 * re-checked wherever a buffer is read, never carried over from an earlier pass; the output validity is
 * written by the loop from the very bits it acted on; a call fails unless its loop wrote every output byte
 * the first pass sized; and dek_ids reads every cell before it creates a Python object.
 * Key copies are wiped with OPENSSL_cleanse. The only global state is which AES-GCM implementation
 * _gcm_backend.h loaded (libsodium or OpenSSL's EVP), chosen once per process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "_gcm_backend.h"

#define KEY_BYTES 32
#define DEK_ID_BYTES 8
#define HEADER_BYTES 9
#define PREFIX_BYTES 13 /* header (9) || salt (4) */
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define OVERHEAD 37
#define GCM_BYTE0 0x11
#define MAX_CELL_BYTES 0x7fffffffLL /* one Arrow binary value and one EVP update stop at 2**31 - 1 */
#define MAX_DEKS 256                /* distinct DEKs per array on the fast path; more fall back to Python */

/* Status codes, mirrored in _native.py. */
enum {
    ST_OK = 0,
    ST_BAD_OFFSETS = 1,    /* offsets decrease, are negative, run past the data buffer or changed mid-call */
    ST_SHORT_CELL = 2,     /* decrypt: a cell shorter than 37 bytes */
    ST_NOT_GCM = 3,        /* decrypt: a cell whose first byte is not 0x11 */
    ST_UNKNOWN_DEK = 4,    /* decrypt: a DEK id missing from the key table passed in */
    ST_AUTH_FAILED = 5,    /* decrypt: tag mismatch */
    ST_TOO_LARGE = 6,      /* a value or the output does not fit the offsets width / format */
    ST_COUNT_MISMATCH = 7, /* encrypt: non-null count differs from the counters reserved */
    ST_CRYPTO_FAILED = 8,  /* the AES-GCM library (libsodium or OpenSSL) refused an operation */
    ST_TOO_MANY_DEKS = 9,  /* decrypt: more distinct DEKs than MAX_DEKS */
};

typedef struct {
    const uint8_t *offsets;
    int width;
    const uint8_t *data;
    int64_t data_len;
    const uint8_t *validity;
    int64_t length;
    int64_t offset;
} array_view;

static inline int64_t
offset_at(const array_view *v, int64_t i)
{
    if (v->width == 4) {
        int32_t x;
        memcpy(&x, v->offsets + (size_t)(v->offset + i) * 4, 4);
        return x;
    }
    int64_t x;
    memcpy(&x, v->offsets + (size_t)(v->offset + i) * 8, 8);
    return x;
}

static inline int
is_valid(const array_view *v, int64_t i)
{
    if (v->validity == NULL)
        return 1;
    int64_t bit = v->offset + i;
    return (v->validity[bit >> 3] >> (bit & 7)) & 1;
}

/* Bounds of value i, checked: 0 <= start <= end <= data_len. Returns 0 when they are not. */
static inline int
value_bounds(const array_view *v, int64_t i, int64_t *start, int64_t *end)
{
    int64_t s = offset_at(v, i), e = offset_at(v, i + 1);
    if (s < 0 || e < s || e > v->data_len)
        return 0;
    *start = s;
    *end = e;
    return 1;
}

static inline void
store_offset(uint8_t *out, int width, int64_t i, int64_t value)
{
    if (width == 4) {
        int32_t x = (int32_t)value;
        memcpy(out + (size_t)i * 4, &x, 4);
    }
    else {
        memcpy(out + (size_t)i * 8, &value, 8);
    }
}

static inline int64_t
max_for_width(int width)
{
    return width == 4 ? (int64_t)INT32_MAX : (int64_t)PY_SSIZE_T_MAX;
}

/* The output bitmap is built row by row by the loops (set_valid), from the bit each loop read once and acted
   on: reading the input bitmap again afterwards could see other bits than the loop did. Bits past the end
   are unspecified in Arrow; they stay zero here. */
static inline void
set_valid(uint8_t *out, int64_t i)
{
    out[i >> 3] |= (uint8_t)(1u << (i & 7));
}

/* The buffers behind one array. */
typedef struct {
    Py_buffer offsets, data, validity;
    int have_offsets, have_data, have_validity;
} array_buffers;

static void
release_buffers(array_buffers *b)
{
    if (b->have_offsets)
        PyBuffer_Release(&b->offsets);
    if (b->have_data)
        PyBuffer_Release(&b->data);
    if (b->have_validity)
        PyBuffer_Release(&b->validity);
    b->have_offsets = b->have_data = b->have_validity = 0;
}

/* Pin the buffers and check that they are large enough for (offset, length); raises ValueError if not. */
static int
open_array(PyObject *offsets, PyObject *data, PyObject *validity, Py_ssize_t length, Py_ssize_t offset,
           int width, array_buffers *b, array_view *v)
{
    memset(b, 0, sizeof(*b));
    if (width != 4 && width != 8) {
        PyErr_SetString(PyExc_ValueError, "offset width must be 4 (binary) or 8 (large_binary)");
        return -1;
    }
    if (length < 0 || offset < 0 || length > PY_SSIZE_T_MAX - offset - 1) {
        PyErr_SetString(PyExc_ValueError, "length and array offset must be non-negative");
        return -1;
    }
    if (PyObject_GetBuffer(offsets, &b->offsets, PyBUF_SIMPLE) < 0)
        return -1;
    b->have_offsets = 1;
    if (PyObject_GetBuffer(data, &b->data, PyBUF_SIMPLE) < 0)
        goto fail;
    b->have_data = 1;
    if (validity != Py_None) {
        if (PyObject_GetBuffer(validity, &b->validity, PyBUF_SIMPLE) < 0)
            goto fail;
        b->have_validity = 1;
    }
    Py_ssize_t entries = offset + length + 1;
    if (entries > PY_SSIZE_T_MAX / width || b->offsets.len < entries * width) {
        PyErr_Format(PyExc_ValueError, "the offsets buffer holds %zd bytes, %zd entries of %d bytes needed",
                     b->offsets.len, entries, width);
        goto fail;
    }
    if (b->have_validity && b->validity.len < (offset + length + 7) / 8) {
        PyErr_Format(PyExc_ValueError, "the validity bitmap holds %zd bytes, %zd bits needed", b->validity.len,
                     offset + length);
        goto fail;
    }
    v->offsets = (const uint8_t *)b->offsets.buf;
    v->width = width;
    v->data = (const uint8_t *)b->data.buf;
    v->data_len = b->data.len;
    v->validity = b->have_validity ? (const uint8_t *)b->validity.buf : NULL;
    v->length = length;
    v->offset = offset;
    return 0;
fail:
    release_buffers(b);
    return -1;
}

/* Build the (status, index, validity, offsets, data) result; steals the three object references. */
static PyObject *
result(int status, int64_t index, PyObject *validity, PyObject *offsets, PyObject *data)
{
    if (validity == NULL) {
        validity = Py_None;
        Py_INCREF(validity);
    }
    if (offsets == NULL) {
        offsets = Py_None;
        Py_INCREF(offsets);
    }
    if (data == NULL) {
        data = Py_None;
        Py_INCREF(data);
    }
    return Py_BuildValue("iLNNN", status, (long long)index, validity, offsets, data);
}

/* Drop a partly filled plaintext output without leaving plaintext in freed memory. */
static void
discard_plaintext(PyObject **data)
{
    if (*data != NULL) {
        OPENSSL_cleanse(PyBytes_AS_STRING(*data), (size_t)PyBytes_GET_SIZE(*data));
        Py_CLEAR(*data);
    }
}

/* ------------------------------------------------------------------------------------------ encrypt */

PyDoc_STRVAR(encrypt_doc,
"encrypt(key, prefix, aad, counter_start, expected_cells, offsets, data, validity, length, array_offset,\n"
"        width, out_width) -> (status, index, validity, offsets, data)\n\n"
"Encrypt every non-null value as a GCM cell: prefix (header || salt, 13 bytes) || u64be(counter) ||\n"
"ciphertext || tag, counters counter_start, counter_start + 1, ... in row order. expected_cells must equal\n"
"the number of non-null values (the counters the caller reserved), else nothing is encrypted.");

static PyObject *
fastgcm_encrypt(PyObject *self, PyObject *args)
{
    Py_buffer key, prefix, aad;
    unsigned long long counter_start, expected;
    PyObject *offsets_obj, *data_obj, *validity_obj;
    Py_ssize_t length, array_offset;
    int width, out_width;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*KKOOOnnii", &key, &prefix, &aad, &counter_start, &expected,
                          &offsets_obj, &data_obj, &validity_obj, &length, &array_offset, &width, &out_width))
        return NULL;

    PyObject *ret = NULL, *out_validity = NULL, *out_offsets = NULL, *out_data = NULL;
    array_buffers bufs;
    array_view v;
    int have_bufs = 0;
    uint8_t key_copy[KEY_BYTES];
    uint8_t pre[PREFIX_BYTES];
    memset(key_copy, 0, sizeof(key_copy));

    if (key.len != KEY_BYTES || prefix.len != PREFIX_BYTES || aad.len > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "key must be 32 bytes, prefix 13 bytes, aad at most 2**31 - 1");
        goto done;
    }
    if (out_width != 4 && out_width != 8) {
        PyErr_SetString(PyExc_ValueError, "output offset width must be 4 or 8");
        goto done;
    }
    if (open_array(offsets_obj, data_obj, validity_obj, length, array_offset, width, &bufs, &v) < 0)
        goto done;
    have_bufs = 1;

    /* Pass 1: validate every non-null value and size the output before encrypting anything. */
    int64_t cells = 0, total = 0, limit = max_for_width(out_width);
    for (int64_t i = 0; i < v.length; i++) {
        int64_t s, e;
        if (!is_valid(&v, i))
            continue;
        if (!value_bounds(&v, i, &s, &e)) {
            ret = result(ST_BAD_OFFSETS, i, NULL, NULL, NULL);
            goto done;
        }
        if (e - s > MAX_CELL_BYTES - OVERHEAD || total > limit - (e - s + OVERHEAD)) {
            ret = result(ST_TOO_LARGE, i, NULL, NULL, NULL);
            goto done;
        }
        total += e - s + OVERHEAD;
        cells++;
    }
    if ((unsigned long long)cells != expected || counter_start > UINT64_MAX - expected) {
        ret = result(ST_COUNT_MISMATCH, cells, NULL, NULL, NULL);
        goto done;
    }
    if (v.length + 1 > PY_SSIZE_T_MAX / out_width) {
        ret = result(ST_TOO_LARGE, v.length, NULL, NULL, NULL);
        goto done;
    }

    out_offsets = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((v.length + 1) * out_width));
    out_data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out_offsets == NULL || out_data == NULL)
        goto done;
    if (v.validity != NULL) {
        out_validity = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((v.length + 7) / 8));
        if (out_validity == NULL)
            goto done;
    }
    memcpy(key_copy, key.buf, KEY_BYTES);
    memcpy(pre, prefix.buf, PREFIX_BYTES);

    uint8_t *od = (uint8_t *)PyBytes_AS_STRING(out_data);
    uint8_t *oo = (uint8_t *)PyBytes_AS_STRING(out_offsets);
    uint8_t *ov = out_validity ? (uint8_t *)PyBytes_AS_STRING(out_validity) : NULL;
    if (ov != NULL)
        memset(ov, 0, (size_t)PyBytes_GET_SIZE(out_validity));
    const uint8_t *aad_buf = (const uint8_t *)aad.buf;
    int aad_len = (int)aad.len;
    int status = ST_OK;
    int64_t fail_at = -1;

    Py_BEGIN_ALLOW_THREADS
    skg_ctx *ctx = skg_new(key_copy, 1);
    if (ctx == NULL) {
        status = ST_CRYPTO_FAILED;
        fail_at = 0;
    }
    int64_t pos = 0;
    uint64_t counter = counter_start;
    store_offset(oo, out_width, 0, 0);
    for (int64_t i = 0; status == ST_OK && i < v.length; i++) {
        if (is_valid(&v, i)) {
            int64_t s, e;
            /* Checked again: a writable input buffer could change under us while the GIL is released. */
            if (!value_bounds(&v, i, &s, &e) || e - s > total - pos - OVERHEAD) {
                status = ST_BAD_OFFSETS;
                fail_at = i;
                break;
            }
            /* Never use a counter outside the range the caller reserved, even if a writable
               validity bitmap changed under us: a counter used twice would repeat a nonce. */
            if (counter - counter_start >= (uint64_t)expected) {
                status = ST_COUNT_MISMATCH;
                fail_at = i;
                break;
            }
            int64_t n = e - s;
            uint8_t *cell = od + pos;
            memcpy(cell, pre, PREFIX_BYTES);
            for (int b = 0; b < 8; b++)
                cell[PREFIX_BYTES + b] = (uint8_t)(counter >> (56 - 8 * b));
            counter++;
            /* The key schedule is kept: each cell only brings its nonce (bytes 9..20 of the cell). */
            if (skg_seal(ctx, cell + HEADER_BYTES, aad_buf, (size_t)aad_len, v.data + s, (size_t)n, cell + 21,
                         cell + 21 + n) != 1) {
                status = ST_CRYPTO_FAILED;
                fail_at = i;
                break;
            }
            pos += n + OVERHEAD;
            if (ov != NULL)
                set_valid(ov, i);
        }
        store_offset(oo, out_width, i + 1, pos);
    }
    skg_free(ctx); /* frees and wipes the key schedule */
    /* Inputs changed since pass 1 (values shorter, bits cleared) leave output bytes unwritten: fail. */
    if (status == ST_OK && counter - counter_start != (uint64_t)expected) {
        status = ST_COUNT_MISMATCH;
        fail_at = (int64_t)(counter - counter_start);
    }
    else if (status == ST_OK && pos != total) {
        status = ST_BAD_OFFSETS;
        fail_at = v.length - 1;
    }
    Py_END_ALLOW_THREADS

    if (status != ST_OK) {
        Py_CLEAR(out_validity);
        Py_CLEAR(out_offsets);
        Py_CLEAR(out_data);
        ret = result(status, fail_at, NULL, NULL, NULL);
        goto done;
    }
    ret = result(ST_OK, -1, out_validity, out_offsets, out_data);
    out_validity = out_offsets = out_data = NULL;

done:
    OPENSSL_cleanse(key_copy, sizeof(key_copy));
    Py_XDECREF(out_validity);
    Py_XDECREF(out_offsets);
    Py_XDECREF(out_data);
    if (have_bufs)
        release_buffers(&bufs);
    PyBuffer_Release(&key);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&aad);
    return ret;
}

/* ------------------------------------------------------------------------------------------ decrypt */

/* Pass 1 of decryption: check every non-null cell is a well-formed GCM cell and size the plaintext. */
static int
check_gcm_cells(const array_view *v, int out_width, int64_t *total, int64_t *fail_at)
{
    int64_t sum = 0, limit = max_for_width(out_width);
    for (int64_t i = 0; i < v->length; i++) {
        int64_t s, e;
        if (!is_valid(v, i))
            continue;
        *fail_at = i;
        if (!value_bounds(v, i, &s, &e))
            return ST_BAD_OFFSETS;
        if (e - s < OVERHEAD)
            return ST_SHORT_CELL;
        if (v->data[s] != GCM_BYTE0)
            return ST_NOT_GCM;
        if (e - s > MAX_CELL_BYTES || sum > limit - (e - s - OVERHEAD))
            return ST_TOO_LARGE;
        sum += e - s - OVERHEAD;
    }
    *fail_at = -1;
    *total = sum;
    return ST_OK;
}

PyDoc_STRVAR(dek_ids_doc,
"dek_ids(offsets, data, validity, length, array_offset, width) -> (status, index, [dek_id, ...])\n\n"
"The distinct DEK ids (8 bytes each, in order of first use) of an array of GCM cells. A status other than\n"
"0 names the first cell the fast path cannot take (malformed, not GCM, bad offsets, too many DEKs).");

/* Pass 2 of dek_ids: the distinct DEK ids, in order of first use, copied out of the cells into seen. */
static int
collect_dek_ids(const array_view *v, uint8_t seen[MAX_DEKS][DEK_ID_BYTES], int *n_seen, int64_t *fail_at)
{
    int last = -1;
    *n_seen = 0;
    for (int64_t i = 0; i < v->length; i++) {
        int64_t s, e;
        if (!is_valid(v, i))
            continue;
        /* Checked again, as everywhere a buffer is read: pass 1 vouches for nothing here. */
        if (!value_bounds(v, i, &s, &e) || e - s < OVERHEAD) {
            *fail_at = i;
            return ST_BAD_OFFSETS;
        }
        const uint8_t *id = v->data + s + 1;
        if (last >= 0 && memcmp(seen[last], id, DEK_ID_BYTES) == 0)
            continue;
        int found = -1;
        for (int k = 0; k < *n_seen; k++)
            if (memcmp(seen[k], id, DEK_ID_BYTES) == 0) {
                found = k;
                break;
            }
        if (found < 0) {
            if (*n_seen == MAX_DEKS) {
                *fail_at = i;
                return ST_TOO_MANY_DEKS;
            }
            memcpy(seen[*n_seen], id, DEK_ID_BYTES);
            found = (*n_seen)++;
        }
        last = found;
    }
    *fail_at = -1;
    return ST_OK;
}

static PyObject *
fastgcm_dek_ids(PyObject *self, PyObject *args)
{
    PyObject *offsets_obj, *data_obj, *validity_obj;
    Py_ssize_t length, array_offset;
    int width;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOnni", &offsets_obj, &data_obj, &validity_obj, &length, &array_offset, &width))
        return NULL;
    array_buffers bufs;
    array_view v;
    if (open_array(offsets_obj, data_obj, validity_obj, length, array_offset, width, &bufs, &v) < 0)
        return NULL;
    uint8_t seen[MAX_DEKS][DEK_ID_BYTES];
    int n_seen = 0;
    int64_t total = 0, fail_at = -1;
    int status = check_gcm_cells(&v, 8, &total, &fail_at);
    if (status == ST_OK)
        status = collect_dek_ids(&v, seen, &n_seen, &fail_at);
    /* The input buffers are not read past this point. Creating the Python objects below may run the garbage
       collector, and with it __del__ code that changes a writable input buffer. */
    release_buffers(&bufs);
    if (status != ST_OK)
        return Py_BuildValue("iL[]", status, (long long)fail_at);
    PyObject *ids = PyList_New(n_seen);
    if (ids == NULL)
        return NULL;
    for (int k = 0; k < n_seen; k++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)seen[k], DEK_ID_BYTES);
        if (b == NULL) {
            Py_DECREF(ids);
            return NULL;
        }
        PyList_SET_ITEM(ids, k, b);
    }
    return Py_BuildValue("iLN", ST_OK, (long long)-1, ids);
}

typedef struct {
    uint8_t id[DEK_ID_BYTES];
    uint8_t key[KEY_BYTES];
    skg_ctx *ctx;
} dek_slot;

PyDoc_STRVAR(decrypt_doc,
"decrypt(keys, aad_tail, offsets, data, validity, length, array_offset, width, out_width)\n"
"    -> (status, index, validity, offsets, data)\n\n"
"Decrypt an array of GCM cells. keys is a sequence of (dek_id (8 bytes), dek (32 bytes)) pairs; aad_tail\n"
"is u16be(len(column_utf8)) || column_utf8 || context. On a status other than 0 nothing is returned and the\n"
"index names the first cell concerned (for ST_AUTH_FAILED: the first cell that failed to authenticate).");

static PyObject *
fastgcm_decrypt(PyObject *self, PyObject *args)
{
    PyObject *keys_obj, *offsets_obj, *data_obj, *validity_obj;
    Py_buffer tail;
    Py_ssize_t length, array_offset;
    int width, out_width;
    (void)self;
    if (!PyArg_ParseTuple(args, "Oy*OOOnnii", &keys_obj, &tail, &offsets_obj, &data_obj, &validity_obj, &length,
                          &array_offset, &width, &out_width))
        return NULL;

    PyObject *ret = NULL, *keys = NULL, *out_validity = NULL, *out_offsets = NULL, *out_data = NULL;
    array_buffers bufs;
    array_view v;
    int have_bufs = 0;
    dek_slot *slots = NULL;
    Py_ssize_t n_keys = 0;
    uint8_t *aad = NULL;
    size_t aad_len = 0;

    if (out_width != 4 && out_width != 8) {
        PyErr_SetString(PyExc_ValueError, "output offset width must be 4 or 8");
        goto done;
    }
    if (tail.len > INT_MAX - HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "the AAD is at most 2**31 - 10 bytes");
        goto done;
    }
    keys = PySequence_Fast(keys_obj, "keys must be a sequence of (dek_id, dek) pairs");
    if (keys == NULL)
        goto done;
    n_keys = PySequence_Fast_GET_SIZE(keys);
    if (n_keys > MAX_DEKS) {
        PyErr_Format(PyExc_ValueError, "at most %d keys per call", MAX_DEKS);
        goto done;
    }
    slots = PyMem_Calloc((size_t)(n_keys ? n_keys : 1), sizeof(dek_slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n_keys; k++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(keys, k);
        Py_buffer id, key;
        if (!PyTuple_Check(pair) || !PyArg_ParseTuple(pair, "y*y*", &id, &key)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "keys must hold (dek_id, dek) tuples");
            goto done;
        }
        int ok = id.len == DEK_ID_BYTES && key.len == KEY_BYTES;
        if (ok) {
            memcpy(slots[k].id, id.buf, DEK_ID_BYTES);
            memcpy(slots[k].key, key.buf, KEY_BYTES);
        }
        PyBuffer_Release(&id);
        PyBuffer_Release(&key);
        if (!ok) {
            PyErr_SetString(PyExc_ValueError, "a DEK id is 8 bytes and a DEK 32 bytes");
            goto done;
        }
    }
    if (open_array(offsets_obj, data_obj, validity_obj, length, array_offset, width, &bufs, &v) < 0)
        goto done;
    have_bufs = 1;

    int64_t total = 0, fail_at = -1;
    int status = check_gcm_cells(&v, out_width, &total, &fail_at);
    if (status != ST_OK) {
        ret = result(status, fail_at, NULL, NULL, NULL);
        goto done;
    }
    if (v.length + 1 > PY_SSIZE_T_MAX / out_width) {
        ret = result(ST_TOO_LARGE, v.length, NULL, NULL, NULL);
        goto done;
    }
    aad_len = HEADER_BYTES + (size_t)tail.len;
    aad = PyMem_Malloc(aad_len);
    out_offsets = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((v.length + 1) * out_width));
    out_data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (aad == NULL || out_offsets == NULL || out_data == NULL) {
        if (aad == NULL)
            PyErr_NoMemory();
        goto done;
    }
    if (v.validity != NULL) {
        out_validity = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((v.length + 7) / 8));
        if (out_validity == NULL)
            goto done;
    }
    memcpy(aad + HEADER_BYTES, tail.buf, (size_t)tail.len);

    uint8_t *od = (uint8_t *)PyBytes_AS_STRING(out_data);
    uint8_t *oo = (uint8_t *)PyBytes_AS_STRING(out_offsets);
    uint8_t *ov = out_validity ? (uint8_t *)PyBytes_AS_STRING(out_validity) : NULL;
    if (ov != NULL)
        memset(ov, 0, (size_t)PyBytes_GET_SIZE(out_validity));

    Py_BEGIN_ALLOW_THREADS
    int64_t pos = 0;
    int last = -1;
    store_offset(oo, out_width, 0, 0);
    for (int64_t i = 0; status == ST_OK && i < v.length; i++) {
        if (is_valid(&v, i)) {
            int64_t s, e;
            /* Checked again: a writable input buffer could change under us while the GIL is released. */
            if (!value_bounds(&v, i, &s, &e) || e - s < OVERHEAD || e - s - OVERHEAD > total - pos) {
                status = ST_BAD_OFFSETS;
                fail_at = i;
                break;
            }
            int64_t n = e - s - OVERHEAD;
            const uint8_t *cell = v.data + s;
            /* The header is read once: the key is chosen by the same DEK id the AAD authenticates. */
            memcpy(aad, cell, HEADER_BYTES);
            if (last < 0 || memcmp(slots[last].id, aad + 1, DEK_ID_BYTES) != 0) {
                last = -1;
                for (Py_ssize_t k = 0; k < n_keys; k++)
                    if (memcmp(slots[k].id, aad + 1, DEK_ID_BYTES) == 0) {
                        last = (int)k;
                        break;
                    }
                if (last < 0) {
                    status = ST_UNKNOWN_DEK;
                    fail_at = i;
                    break;
                }
                if (slots[last].ctx == NULL) { /* key schedule built once per DEK, on first use */
                    slots[last].ctx = skg_new(slots[last].key, 0);
                    if (slots[last].ctx == NULL) {
                        status = ST_CRYPTO_FAILED;
                        fail_at = i;
                        break;
                    }
                }
            }
            int rc = skg_open(slots[last].ctx, cell + HEADER_BYTES, aad, aad_len, cell + 21, (size_t)n,
                              cell + 21 + n, od + pos);
            if (rc != 1) {
                status = rc == 0 ? ST_AUTH_FAILED : ST_CRYPTO_FAILED;
                fail_at = i;
                break;
            }
            pos += n;
            if (ov != NULL)
                set_valid(ov, i);
        }
        store_offset(oo, out_width, i + 1, pos);
    }
    /* Inputs changed since pass 1 (cells shorter, bits cleared) leave output bytes unwritten: fail. */
    if (status == ST_OK && pos != total) {
        status = ST_BAD_OFFSETS;
        fail_at = v.length - 1;
    }
    Py_END_ALLOW_THREADS

    if (status != ST_OK) {
        discard_plaintext(&out_data);
        ret = result(status, fail_at, NULL, NULL, NULL);
        goto done;
    }
    ret = result(ST_OK, -1, out_validity, out_offsets, out_data);
    out_validity = out_offsets = out_data = NULL;

done:
    if (slots != NULL) {
        for (Py_ssize_t k = 0; k < n_keys; k++)
            skg_free(slots[k].ctx);
        OPENSSL_cleanse(slots, sizeof(dek_slot) * (size_t)(n_keys ? n_keys : 1));
        PyMem_Free(slots);
    }
    PyMem_Free(aad);
    Py_XDECREF(out_validity);
    Py_XDECREF(out_offsets);
    discard_plaintext(&out_data);
    Py_XDECREF(keys);
    if (have_bufs)
        release_buffers(&bufs);
    PyBuffer_Release(&tail);
    return ret;
}

/* ------------------------------------------------------------------------------------------ module */

static PyMethodDef fastgcm_methods[] = {
    {"encrypt", fastgcm_encrypt, METH_VARARGS, encrypt_doc},
    {"decrypt", fastgcm_decrypt, METH_VARARGS, decrypt_doc},
    {"dek_ids", fastgcm_dek_ids, METH_VARARGS, dek_ids_doc},
    {NULL, NULL, 0, NULL},
};

static int
fastgcm_exec(PyObject *m)
{
    if (PyModule_AddIntConstant(m, "ST_OK", ST_OK) < 0
        || PyModule_AddIntConstant(m, "ST_BAD_OFFSETS", ST_BAD_OFFSETS) < 0
        || PyModule_AddIntConstant(m, "ST_SHORT_CELL", ST_SHORT_CELL) < 0
        || PyModule_AddIntConstant(m, "ST_NOT_GCM", ST_NOT_GCM) < 0
        || PyModule_AddIntConstant(m, "ST_UNKNOWN_DEK", ST_UNKNOWN_DEK) < 0
        || PyModule_AddIntConstant(m, "ST_AUTH_FAILED", ST_AUTH_FAILED) < 0
        || PyModule_AddIntConstant(m, "ST_TOO_LARGE", ST_TOO_LARGE) < 0
        || PyModule_AddIntConstant(m, "ST_COUNT_MISMATCH", ST_COUNT_MISMATCH) < 0
        || PyModule_AddIntConstant(m, "ST_CRYPTO_FAILED", ST_CRYPTO_FAILED) < 0
        || PyModule_AddIntConstant(m, "ST_TOO_MANY_DEKS", ST_TOO_MANY_DEKS) < 0
        || PyModule_AddIntConstant(m, "MAX_DEKS", MAX_DEKS) < 0)
        return -1;
    if (PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0)
        return -1;
    return PyModule_AddStringConstant(m, "GCM_BACKEND", skg_backend());
}

static PyModuleDef_Slot fastgcm_slots[] = {
    {Py_mod_exec, fastgcm_exec},
    {0, NULL},
};

static struct PyModuleDef fastgcm_module = {
    PyModuleDef_HEAD_INIT,
    "spark_kms.crypto._fastgcm",
    "Batched AES-256-GCM cells over Arrow-style buffers (see spark_kms/crypto/_native.py).",
    0,
    fastgcm_methods,
    fastgcm_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__fastgcm(void)
{
    return PyModuleDef_Init(&fastgcm_module);
}
