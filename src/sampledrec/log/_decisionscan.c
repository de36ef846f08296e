/*
 * The auditor's decision reader (part of the optional accelerator; see columns.py).
 *
 *   decision_columns(buf, start, end, key_for, hash_key) -> tuple
 *
 * Reads the records (u32be length, entry) of one batch payload buf[start:end] and returns, for
 * the decision entries of the usual shape, their fields as columns, their personal fields
 * (call reference, agent, attributes) already unsealed, and a fingerprint of each reference. Every other
 * record (another entry type, or a decision of an unusual shape) is only located: the caller
 * decodes it with format.decode_entry, which stays the reference. So the columns must equal,
 * field for field, what decode_entry gives; tests/test_auditlog.py compares the two.
 *
 * The usual shape of a decision (format.py DECISION; the tags are in _decisionlayout.h):
 *   version | type T_DECISION | time u64 | epoch_id | policy_version | rule | threshold |
 *   [draw] | reason | sealed
 * every length in the short form (< 0xFF), the integers at most 8 bytes, text valid UTF-8,
 * and, once unsealed, personal fields call_ref (kind byte + value) | [agent] |
 * [caller_pseudonym] | [attributes], nothing else.
 *
 * key_for(kid: str) -> (key, kcv) | None is called once per distinct key id. hash_key (16
 * random bytes) keys the tables that intern text fields. A sealed field
 * whose key is missing or whose key check value differs is "unreadable" (ref_kind 0), as in
 * decode_entry. AES-CTR is computed as AES-ECB over the counter blocks, many rows per call.
 *
 *   call_firsts(epoch, kind, lens, refs, width, key) -> bytes
 *
 * For each decision, the row of the first decision of the same call (see below).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_decisionlayout.h"

#define TABLE 8192   /* slots of an intern table (a power of two) */
#define DISTINCT 4096 /* at most this many distinct values per field and batch, else slow path */
#define SCRATCH (64 * 1024)
#define END 256 /* "no more fields": not a tag */
/* The smallest record parse_public accepts: its length, the header, four fields and the reason
 * (empty values), the sealed field with an empty key id and no ciphertext. */
#define MIN_DECISION (4 + ENTRY_HEADER + 5 * 2 + 2 + 1 + KCV_SIZE + IV_SIZE)

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define BE64(x) (x)
#else
#define BE64(x) __builtin_bswap64(x)
#endif

/* ---- SipHash-2-4 (Aumasson and Bernstein), for hash tables an adversary cannot flood ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                 \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                     \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                     \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                 \
    } while (0)

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint64_t siphash24(uint64_t k0, uint64_t k1, const unsigned char *in, size_t len) {
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = le64(in + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = whole; i < len; i++) b |= (uint64_t)in[i] << (8 * (i - whole));
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- intern tables: few distinct values (epochs, rules, agents, key ids) get small codes ---- */

typedef struct {
    unsigned char *data; /* copies */
    size_t len;
    uint64_t hash;
} ival;

typedef struct {
    int32_t slot[TABLE]; /* -1 empty, else index into vals */
    ival vals[DISTINCT];
    PyObject *objs;      /* list of the decoded values, by code */
    int n;
    int kind;            /* 0 bytes, 1 UTF-8 text, 2 ASCII text with replacement */
    int32_t last;        /* last code found, tried first */
    uint64_t k0, k1;     /* SipHash key: values cannot be chosen to collide in the table */
} itable;

static void it_init(itable *t, int kind, const unsigned char *key) {
    t->k0 = le64(key);
    t->k1 = le64(key + 8);
    memset(t->slot, 0xff, sizeof(t->slot));
    t->n = 0;
    t->kind = kind;
    t->last = -1;
    t->objs = NULL;
}

static void it_free(itable *t) {
    for (int i = 0; i < t->n; i++) {
        OPENSSL_cleanse(t->vals[i].data, t->vals[i].len); /* agents are personal */
        free(t->vals[i].data);
    }
    t->n = 0;
    Py_CLEAR(t->objs);
}

#define FNV_BASIS 1469598103934665603ULL
#define FNV_PRIME 1099511628211ULL

/* A call reference's fingerprint: FNV-1a 64 over its kind byte then its bytes (columns.py
 * computes the same with numpy). Only ever a hint: equality is always checked on the bytes. */
static uint64_t ref_fingerprint(uint8_t kind, const unsigned char *p, size_t n) {
    uint64_t h = (FNV_BASIS ^ kind) * FNV_PRIME;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * FNV_PRIME;
    return h;
}

/* The code of p[:n]: >= 0; -1 when the value is not acceptable (invalid UTF-8: the caller
 * takes the slow path, where decode_entry raises), -2 on a Python error, -3 when full. */
static int32_t it_code(itable *t, const unsigned char *p, size_t n) {
    if (t->last >= 0 && t->vals[t->last].len == n && memcmp(t->vals[t->last].data, p, n) == 0)
        return t->last;
    uint64_t h = siphash24(t->k0, t->k1, p, n);
    size_t s = (size_t)h & (TABLE - 1);
    while (t->slot[s] >= 0) {
        ival *v = &t->vals[t->slot[s]];
        if (v->hash == h && v->len == n && memcmp(v->data, p, n) == 0) return t->last = t->slot[s];
        s = (s + 1) & (TABLE - 1);
    }
    if (t->n >= DISTINCT) return -3;
    PyObject *obj;
    if (t->kind == 1) {
        obj = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "strict");
        if (!obj) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -2;
            PyErr_Clear();
            return -1;
        }
    } else if (t->kind == 2) {
        obj = PyUnicode_DecodeASCII((const char *)p, (Py_ssize_t)n, "replace");
    } else {
        obj = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    }
    if (!obj) return -2;
    if (!t->objs && !(t->objs = PyList_New(0))) {
        Py_DECREF(obj);
        return -2;
    }
    int rc = PyList_Append(t->objs, obj);
    Py_DECREF(obj);
    if (rc < 0) return -2;
    unsigned char *copy = malloc(n ? n : 1);
    if (!copy) {
        PyErr_NoMemory();
        return -2;
    }
    memcpy(copy, p, n);
    t->vals[t->n] = (ival){copy, n, h};
    t->slot[s] = t->n;
    return t->last = t->n++;
}

/* ---- field parsing ---- */

/* The next short-form field at e[*pos] (< end): its tag; value at e[*vpos], length *vlen.
 * -1 when there is none of the usual shape there. */
static int next_field(const unsigned char *e, size_t end, size_t *pos, size_t *vpos,
                      size_t *vlen) {
    if (*pos + 2 > end) return -1;
    int tag = e[*pos];
    size_t n = e[*pos + 1];
    if (n == 0xFF || *pos + 2 + n > end) return -1;
    *vpos = *pos + 2;
    *vlen = n;
    *pos += 2 + n;
    return tag;
}

static uint64_t be_uint(const unsigned char *p, size_t n) {
    if (n == 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        return BE64(v);
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static int ascii_only(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] & 0x80) return 0;
    return 1;
}

typedef struct {
    size_t rec;       /* record number in the batch */
    size_t off;       /* entry offset in buf */
    int32_t epoch, version, rule, kid, agent, attrs;
    uint64_t time, thr, draw, reason;
    uint8_t has_draw;
    size_t kcv, iv, ct; /* offsets in buf of the key check value, IV, ciphertext */
    size_t ct_len;
    size_t pt;        /* offset of the plaintext in the plaintext buffer */
    uint8_t kind;     /* 0 unreadable, 1 str, 2 bytes; 255: slow path */
    size_t ref, ref_len; /* in the plaintext buffer */
} row;

/* Parse one entry of the usual decision shape into r (public fields); 0 if it is not one. */
static int parse_public(const unsigned char *b, size_t off, size_t n, row *r, itable *epochs,
                        itable *versions, itable *rules, itable *kids, int *err) {
    const unsigned char *e = b + off;
    if (n < ENTRY_HEADER || e[0] != ENTRY_VERSION || e[1] != T_DECISION) return 0;
    r->time = be_uint(e + 2, 8);
    size_t pos = ENTRY_HEADER, vp, vl;
    int tag = next_field(e, n, &pos, &vp, &vl);
    static const int want[4] = {TAG_EPOCH_ID, TAG_POLICY_VERSION, TAG_RULE, TAG_THRESHOLD};
    int32_t *codes[3] = {&r->epoch, &r->version, &r->rule};
    itable *tabs[3] = {epochs, versions, rules};
    for (int i = 0; i < 4; i++) {
        if (tag != want[i]) return 0;
        if (i < 3) {
            int32_t c = it_code(tabs[i], e + vp, vl);
            if (c == -2) *err = 1;
            if (c < 0) return 0;
            *codes[i] = c;
        } else {
            if (vl > 8) return 0;
            r->thr = be_uint(e + vp, vl);
        }
        tag = next_field(e, n, &pos, &vp, &vl);
    }
    r->has_draw = 0;
    r->draw = 0;
    if (tag == TAG_DRAW) {
        if (vl > 8) return 0;
        r->has_draw = 1;
        r->draw = be_uint(e + vp, vl);
        tag = next_field(e, n, &pos, &vp, &vl);
    }
    if (tag != TAG_REASON || vl > 8) return 0;
    r->reason = be_uint(e + vp, vl);
    tag = next_field(e, n, &pos, &vp, &vl);
    if (tag != TAG_SEALED || pos != n || vl < 1) return 0;
    size_t klen = e[vp];
    if (vl < 1 + klen + KCV_SIZE + IV_SIZE) return 0;
    int32_t k = it_code(kids, e + vp + 1, klen);
    if (k == -2) *err = 1;
    if (k < 0) return 0;
    r->kid = k;
    r->kcv = off + vp + 1 + klen;
    r->iv = r->kcv + KCV_SIZE;
    r->ct = r->iv + IV_SIZE;
    r->ct_len = vl - 1 - klen - KCV_SIZE - IV_SIZE;
    return 1;
}

/* Parse the unsealed personal fields of r (plaintext p[0:n]); 0 if not the usual shape. */
static int parse_personal(const unsigned char *p, size_t n, row *r, itable *agents,
                          itable *attrs, int *err) {
    size_t pos = 0, vp, vl;
    int tag = next_field(p, n, &pos, &vp, &vl);
    if (tag != TAG_CALL_REF || vl < 1) return 0;
    r->kind = p[vp] == REF_TEXT ? 1 : 2; /* the column's kinds: 1 text, 2 bytes */
    r->ref = r->pt + vp + 1;
    r->ref_len = vl - 1;
    if (r->kind == 1 && !ascii_only(p + vp + 1, vl - 1)) {
        PyObject *s = PyUnicode_DecodeUTF8((const char *)p + vp + 1, (Py_ssize_t)vl - 1, "strict");
        if (!s) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) *err = 1;
            else PyErr_Clear();
            return 0;
        }
        Py_DECREF(s);
    }
    r->agent = -1;
    tag = pos < n ? next_field(p, n, &pos, &vp, &vl) : END;
    if (tag == TAG_AGENT) {
        int32_t a = it_code(agents, p + vp, vl);
        if (a == -2) *err = 1;
        if (a < 0) return 0;
        r->agent = a;
        tag = pos < n ? next_field(p, n, &pos, &vp, &vl) : END;
    }
    if (tag == TAG_CALLER_PSEUDONYM) tag = pos < n ? next_field(p, n, &pos, &vp, &vl) : END;
    r->attrs = -1;
    if (tag == TAG_ATTRIBUTES) {
        int32_t a = it_code(attrs, p + vp, vl);
        if (a == -2) *err = 1;
        if (a < 0) return 0;
        r->attrs = a;
        tag = pos < n ? next_field(p, n, &pos, &vp, &vl) : END;
    }
    return tag == END && pos == n;
}

/* ---- AES-CTR over many rows: ECB over their counter blocks ---- */

typedef struct {
    EVP_CIPHER_CTX *ctx;
    int key;                 /* key code the context holds, -1 none */
    unsigned char ctr[SCRATCH];
    unsigned char ks[SCRATCH + 32];
    size_t used;
    row *pending[SCRATCH / 16];
    int npending;
} ctrbatch;

static int ctr_flush(ctrbatch *c, const unsigned char *b, unsigned char *plain) {
    if (!c->used) return 0;
    int outl = 0;
    if (EVP_EncryptUpdate(c->ctx, c->ks, &outl, c->ctr, (int)c->used) != 1 ||
        (size_t)outl != c->used)
        return -1;
    size_t k = 0;
    for (int i = 0; i < c->npending; i++) {
        row *r = c->pending[i];
        const unsigned char *ct = b + r->ct;
        unsigned char *pt = plain + r->pt;
        size_t j = 0;
        for (; j + 8 <= r->ct_len; j += 8) {
            uint64_t a, s;
            memcpy(&a, ct + j, 8);
            memcpy(&s, c->ks + k + j, 8);
            a ^= s;
            memcpy(pt + j, &a, 8);
        }
        for (; j < r->ct_len; j++) pt[j] = ct[j] ^ c->ks[k + j];
        k += (r->ct_len + 15) / 16 * 16;
    }
    c->used = 0;
    c->npending = 0;
    return 0;
}

static const EVP_CIPHER *aes_ecb(size_t keylen) {
    return keylen == 16 ? EVP_aes_128_ecb() : keylen == 24 ? EVP_aes_192_ecb() : EVP_aes_256_ecb();
}

PyObject *py_decision_columns(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t start, end;
    PyObject *key_for;
    Py_buffer hkey;
    if (!PyArg_ParseTuple(args, "y*nnOy*", &buf, &start, &end, &key_for, &hkey)) return NULL;
    PyObject *result = NULL, *keys = NULL;
    row *rows = NULL;
    uint64_t *rec_off = NULL;
    uint32_t *rec_len = NULL;
    unsigned char *plain = NULL;
    size_t plain_size = 0;
    ctrbatch *cb = NULL;
    itable *t = calloc(6, sizeof(itable));
    int err = 0;
    if (!t) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&hkey);
        return PyErr_NoMemory();
    }
    itable *epochs = &t[0], *versions = &t[1], *rules = &t[2], *kids = &t[3], *agents = &t[4];
    itable *attrs = &t[5];
    if (hkey.len != 16) {
        PyErr_SetString(PyExc_ValueError, "the hash key must be 16 bytes");
        goto done;
    }
    it_init(epochs, 1, hkey.buf);
    it_init(versions, 0, hkey.buf);
    it_init(rules, 1, hkey.buf);
    it_init(kids, 2, hkey.buf);
    it_init(agents, 1, hkey.buf);
    it_init(attrs, 1, hkey.buf);
    const unsigned char *b = (const unsigned char *)buf.buf;
    if (start < 0 || end > buf.len || start > end) {
        PyErr_SetString(PyExc_ValueError, "bad start or end");
        goto done;
    }
    /* pass 1: framing and public fields */
    /* every record takes 4 bytes or more, a decision of the usual shape MIN_DECISION or more */
    size_t cap = (size_t)(end - start) / 4 + 1, nrec = 0, nrow = 0;
    size_t rcap = (size_t)(end - start) / MIN_DECISION + 1;
    rec_off = malloc(cap * sizeof(uint64_t));
    rec_len = malloc(cap * sizeof(uint32_t));
    rows = malloc(rcap * sizeof(row));
    if (!rec_off || !rec_len || !rows) {
        PyErr_NoMemory();
        goto done;
    }
    size_t pos = (size_t)start;
    while (pos + 4 <= (size_t)end) {
        size_t n = ((size_t)b[pos] << 24) | ((size_t)b[pos + 1] << 16) |
                   ((size_t)b[pos + 2] << 8) | (size_t)b[pos + 3];
        if (n > (size_t)end - pos - 4) break;
        pos += 4;
        rec_off[nrec] = pos;
        rec_len[nrec] = (uint32_t)n;
        row *r = &rows[nrow];
        if (parse_public(b, pos, n, r, epochs, versions, rules, kids, &err)) {
            r->rec = nrec;
            r->off = pos;
            r->pt = plain_size;
            plain_size += r->ct_len;
            nrow++;
        }
        if (err) goto done;
        nrec++;
        pos += n;
    }
    /* the keys, once per key id */
    keys = PyList_New(kids->n);
    if (!keys) goto done;
    for (int i = 0; i < kids->n; i++) {
        PyObject *got = PyObject_CallOneArg(key_for, PyList_GET_ITEM(kids->objs, i));
        if (!got) goto done;
        if (got != Py_None && (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2 ||
                               !PyBytes_Check(PyTuple_GET_ITEM(got, 0)) ||
                               !PyBytes_Check(PyTuple_GET_ITEM(got, 1)))) {
            Py_DECREF(got);
            PyErr_SetString(PyExc_TypeError, "key_for must return (key, kcv) or None");
            goto done;
        }
        if (got != Py_None) {
            Py_ssize_t kl = PyBytes_GET_SIZE(PyTuple_GET_ITEM(got, 0));
            if ((kl != 16 && kl != 24 && kl != 32) ||
                PyBytes_GET_SIZE(PyTuple_GET_ITEM(got, 1)) != 4) {
                Py_DECREF(got);
                PyErr_SetString(PyExc_ValueError, "key_for: bad key or check value length");
                goto done;
            }
        }
        PyList_SET_ITEM(keys, i, got);
    }
    /* pass 2: unseal, then parse the personal fields */
    plain = malloc(plain_size ? plain_size : 1);
    cb = malloc(sizeof(ctrbatch));
    if (!plain || !cb) {
        PyErr_NoMemory();
        goto done;
    }
    cb->ctx = EVP_CIPHER_CTX_new();
    cb->key = -1;
    cb->used = 0;
    cb->npending = 0;
    if (!cb->ctx) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < nrow; i++) {
        row *r = &rows[i];
        PyObject *k = PyList_GET_ITEM(keys, r->kid);
        if (k == Py_None ||
            CRYPTO_memcmp(PyBytes_AS_STRING(PyTuple_GET_ITEM(k, 1)), b + r->kcv, 4) != 0) {
            r->kind = 0; /* unreadable: key gone, or not the key it was sealed with */
            r->agent = -1;
            r->attrs = -1;
            continue;
        }
        r->kind = 3; /* to parse once decrypted */
        size_t need = (r->ct_len + 15) / 16 * 16;
        if (need == 0) continue; /* nothing sealed: the personal fields are checked below */
        if (need > SCRATCH) {
            r->kind = 255; /* longer than any usual call reference: slow path */
            continue;
        }
        if (cb->key != r->kid || cb->used + need > SCRATCH) {
            if (ctr_flush(cb, b, plain) < 0) goto crypto_error;
        }
        if (cb->key != r->kid) {
            PyObject *kb = PyTuple_GET_ITEM(k, 0);
            if (EVP_EncryptInit_ex(cb->ctx, aes_ecb((size_t)PyBytes_GET_SIZE(kb)), NULL,
                                   (const unsigned char *)PyBytes_AS_STRING(kb), NULL) != 1 ||
                EVP_CIPHER_CTX_set_padding(cb->ctx, 0) != 1)
                goto crypto_error;
            cb->key = r->kid;
        }
        /* counter blocks: the IV as a 128-bit big-endian number, plus 0, 1, ... */
        const unsigned char *iv = b + r->iv;
        uint64_t hi = be_uint(iv, 8), lo = be_uint(iv + 8, 8);
        for (size_t j = 0; j < need / 16; j++) {
            uint64_t l = lo + j, h = hi + (l < lo);
            h = BE64(h);
            l = BE64(l);
            memcpy(cb->ctr + cb->used, &h, 8);
            memcpy(cb->ctr + cb->used + 8, &l, 8);
            cb->used += 16;
        }
        cb->pending[cb->npending++] = r;
    }
    if (ctr_flush(cb, b, plain) < 0) goto crypto_error;
    size_t width = 0;
    for (size_t i = 0; i < nrow; i++) {
        row *r = &rows[i];
        if (r->kind != 3) continue;
        if (!parse_personal(plain + r->pt, r->ct_len, r, agents, attrs, &err)) r->kind = 255;
        if (err) goto done;
        if (r->kind != 255 && r->ref_len > width) width = r->ref_len;
    }
    /* the columns */
    size_t m = 0;
    for (size_t i = 0; i < nrow; i++)
        if (rows[i].kind != 255) m++;
    if (width == 0) width = 1;
    PyObject *o_rec = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * 8));
    PyObject *o_time = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * 8));
    PyObject *o_thr = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * 8));
    PyObject *o_draw = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * 8));
    PyObject *o_hasd = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)m);
    PyObject *o_reason = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * 8));
    PyObject *o_codes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * 5 * 4));
    PyObject *o_kind = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)m);
    PyObject *o_rlen = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * 4));
    PyObject *o_refs = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * width));
    PyObject *o_fp = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * 8));
    PyObject *o_off = PyBytes_FromStringAndSize((const char *)rec_off, (Py_ssize_t)(nrec * 8));
    PyObject *o_len = PyBytes_FromStringAndSize((const char *)rec_len, (Py_ssize_t)(nrec * 4));
    if (!o_rec || !o_time || !o_thr || !o_draw || !o_hasd || !o_reason || !o_codes || !o_kind ||
        !o_rlen || !o_refs || !o_off || !o_len || !o_fp) {
        Py_XDECREF(o_rec); Py_XDECREF(o_time); Py_XDECREF(o_thr); Py_XDECREF(o_draw);
        Py_XDECREF(o_hasd); Py_XDECREF(o_reason); Py_XDECREF(o_codes); Py_XDECREF(o_kind);
        Py_XDECREF(o_rlen); Py_XDECREF(o_refs); Py_XDECREF(o_off); Py_XDECREF(o_len);
        Py_XDECREF(o_fp);
        goto done;
    }
    uint64_t *c_rec = (uint64_t *)PyBytes_AS_STRING(o_rec);
    uint64_t *c_time = (uint64_t *)PyBytes_AS_STRING(o_time);
    uint64_t *c_thr = (uint64_t *)PyBytes_AS_STRING(o_thr);
    uint64_t *c_draw = (uint64_t *)PyBytes_AS_STRING(o_draw);
    uint8_t *c_hasd = (uint8_t *)PyBytes_AS_STRING(o_hasd);
    uint64_t *c_reason = (uint64_t *)PyBytes_AS_STRING(o_reason);
    /* epoch, version, rule, agent, attributes */
    int32_t *c_codes = (int32_t *)PyBytes_AS_STRING(o_codes);
    uint8_t *c_kind = (uint8_t *)PyBytes_AS_STRING(o_kind);
    int32_t *c_rlen = (int32_t *)PyBytes_AS_STRING(o_rlen);
    unsigned char *c_refs = (unsigned char *)PyBytes_AS_STRING(o_refs);
    uint64_t *c_fp = (uint64_t *)PyBytes_AS_STRING(o_fp);
    memset(c_refs, 0, m * width);
    size_t j = 0;
    for (size_t i = 0; i < nrow; i++) {
        row *r = &rows[i];
        if (r->kind == 255) continue;
        c_rec[j] = r->rec;
        c_time[j] = r->time;
        c_thr[j] = r->thr;
        c_draw[j] = r->draw;
        c_hasd[j] = r->has_draw;
        c_reason[j] = r->reason;
        c_codes[5 * j] = r->epoch;
        c_codes[5 * j + 1] = r->version;
        c_codes[5 * j + 2] = r->rule;
        c_codes[5 * j + 3] = r->kind ? r->agent : -1;
        c_codes[5 * j + 4] = r->kind ? r->attrs : -1;
        c_kind[j] = r->kind == 0 ? 0 : r->kind;
        c_rlen[j] = r->kind ? (int32_t)r->ref_len : 0;
        c_fp[j] = 0;
        if (r->kind) {
            memcpy(c_refs + j * width, plain + r->ref, r->ref_len);
            c_fp[j] = ref_fingerprint(r->kind, plain + r->ref, r->ref_len);
        }
        j++;
    }
#define OBJS(tab) ((tab)->objs ? (Py_INCREF((tab)->objs), (tab)->objs) : PyList_New(0))
    result = Py_BuildValue("(NNNNNNNNNNnNNNNNNNN)", o_off, o_len, o_rec, o_time, o_thr, o_draw,
                           o_hasd, o_reason, o_codes, o_kind, (Py_ssize_t)width, o_rlen, o_refs,
                           o_fp, OBJS(epochs), OBJS(versions), OBJS(rules), OBJS(agents),
                           OBJS(attrs));
#undef OBJS
    goto done;
crypto_error:
    PyErr_SetString(PyExc_RuntimeError, "AES failed in the decision reader");
done:
    if (cb) {
        if (cb->ctx) EVP_CIPHER_CTX_free(cb->ctx);
        OPENSSL_cleanse(cb->ks, sizeof(cb->ks));
        free(cb);
    }
    if (plain) {
        OPENSSL_cleanse(plain, plain_size); /* personal plaintext: wipe */
        free(plain);
    }
    free(rows);
    free(rec_off);
    free(rec_len);
    Py_XDECREF(keys);
    for (int i = 0; i < 6; i++) it_free(&t[i]);
    free(t);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&hkey);
    return result;
}

/*
 *   call_firsts(epoch, kind, lens, refs, width, key) -> bytes
 *
 * For each decision row, the row of the first decision of the same call (same epoch code, same
 * reference kind and bytes) as int64, itself for the first, -1 where kind is 0 (no reference).
 * A hash table keyed with SipHash under `key` (16 random bytes per call: whoever chooses call
 * references cannot make them collide, which an unkeyed hash would allow, making this
 * quadratic), every match confirmed on the bytes: exact.
 */
/* Rows are first partitioned by the top bits of their hash, so that each partition's table is
 * small enough to stay in the CPU cache: one table over ten million rows misses the cache on
 * nearly every probe. */
#define PART_ROWS 8192 /* about this many rows per partition */

PyObject *py_call_firsts(PyObject *self, PyObject *args) {
    Py_buffer epb, kb, lb, rb, keyb;
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "y*y*y*y*ny*", &epb, &kb, &lb, &rb, &width, &keyb)) return NULL;
    PyObject *out = NULL;
    uint64_t *hash = NULL, *phash = NULL;
    int32_t *order = NULL, *table = NULL;
    size_t *start = NULL;
    Py_ssize_t n = kb.len;
    if (width < 1 || n > INT32_MAX || keyb.len != 16 || epb.len != n * 4 || lb.len != n * 8 ||
        (n > 0 && width > PY_SSIZE_T_MAX / n) || rb.len != n * width) {
        PyErr_SetString(PyExc_ValueError, "call_firsts: columns of different lengths");
        goto done;
    }
    int bits = 0;
    while (bits < 20 && ((size_t)PART_ROWS << bits) < (size_t)n) bits++;
    size_t parts = (size_t)1 << bits;
#define PART(h) (bits ? (size_t)((h) >> (64 - bits)) : 0) /* the top bits (a shift by 64 is UB) */
    hash = malloc((n ? n : 1) * sizeof(uint64_t));
    phash = malloc((n ? n : 1) * sizeof(uint64_t));
    order = malloc((n ? n : 1) * sizeof(int32_t));
    start = calloc(parts + 1, sizeof(size_t));
    out = PyBytes_FromStringAndSize(NULL, n * 8);
    if (!hash || !phash || !order || !start || !out) {
        Py_CLEAR(out);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    const int32_t *ep = epb.buf;
    const uint8_t *kind = kb.buf;
    const int64_t *len = lb.buf;
    const unsigned char *refs = rb.buf;
    uint64_t k0 = le64(keyb.buf), k1 = le64((const unsigned char *)keyb.buf + 8);
    int64_t *first = (int64_t *)PyBytes_AS_STRING(out);
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    /* 1. hash every row that has a reference; count the rows of each partition */
    for (Py_ssize_t i = 0; i < n; i++) {
        first[i] = -1;
        if (!kind[i]) continue;
        size_t li = len[i] < 0 ? 0 : (size_t)len[i] > (size_t)width ? (size_t)width : (size_t)len[i];
        hash[i] = siphash24(k0 ^ (uint32_t)ep[i], k1 ^ kind[i], refs + i * width, li);
        start[PART(hash[i])] += 1;
    }
    /* 2. rows grouped by partition, in ascending order within each (a stable counting sort) */
    size_t sum = 0, biggest = 0;
    for (size_t q = 0; q < parts; q++) {
        size_t c = start[q];
        start[q] = sum;
        sum += c;
        if (c > biggest) biggest = c;
    }
    start[parts] = sum;
    {
        size_t *fill = malloc(parts * sizeof(size_t));
        size_t cap = 16;
        while (cap < biggest * 2) cap <<= 1;
        table = malloc(cap * sizeof(int32_t));
        if (!fill || !table) {
            free(fill);
            nomem = 1;
        } else {
            memcpy(fill, start, parts * sizeof(size_t));
            for (Py_ssize_t i = 0; i < n; i++)
                if (kind[i]) {
                    size_t at = fill[PART(hash[i])]++;
                    order[at] = (int32_t)i;
                    phash[at] = hash[i]; /* the hashes in partition order: read in sequence */
                }
            free(fill);
            /* 3. per partition, a small open-addressing table of positions in the partition
             * (its hashes and rows are contiguous: no cache miss per probe); matches confirmed
             * on the bytes */
            for (size_t q = 0; q < parts; q++) {
                size_t base = start[q], c = start[q + 1] - base, tc = 16;
                while (tc < c * 2) tc <<= 1;
                memset(table, 0xff, tc * sizeof(int32_t));
                for (size_t x = base; x < start[q + 1]; x++) {
                    int32_t i = order[x];
                    uint64_t h = phash[x];
                    size_t s = (size_t)h & (tc - 1);
                    for (;;) {
                        int32_t y = table[s];
                        if (y < 0) {
                            table[s] = (int32_t)(x - base);
                            first[i] = i;
                            break;
                        }
                        int32_t j = order[base + (size_t)y];
                        if (phash[base + (size_t)y] == h && ep[j] == ep[i] && kind[j] == kind[i] &&
                            len[j] == len[i] &&
                            memcmp(refs + (size_t)j * width, refs + (size_t)i * width,
                                   (size_t)width) == 0) {
                            first[i] = j;
                            break;
                        }
                        s = (s + 1) & (tc - 1);
                    }
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        Py_CLEAR(out);
        PyErr_NoMemory();
    }
done:
    free(hash);
    free(phash);
    free(order);
    free(start);
    free(table);
    PyBuffer_Release(&epb);
    PyBuffer_Release(&kb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&rb);
    PyBuffer_Release(&keyb);
    return out;
#undef PART
}
