/*
 * Optional accelerator for the log's RFC 6962 Merkle hashing (see hashing.py).
 *
 * Hashing one leaf from Python costs a microsecond of interpreter overhead; a log verifies
 * millions of them. These functions hash whole batches in C with OpenSSL's SHA-256, without
 * holding the GIL, and give exactly the results of the pure-Python path (tests compare them).
 *
 *   leaf_hashes(entries) -> bytes                      SHA-256(0x00 || e) for each, concatenated
 *   extend(range, size, leaf_hashes) -> (range, size)  append leaves to a compact range
 *   hash_records(buf, offset, count, range, size, probe=0)
 *       -> (range, size, end, offsets, probes)         parse `count` records (u32be length, data)
 *                                                      from buf[offset:], hash them, extend the
 *                                                      range; offsets = uint64 start of each
 *                                                      entry; probes = first `probe` bytes of
 *                                                      each entry, zero-padded
 *   encode_decisions(items, record_type, fields, cache, prefix_for, key, iv_prefix, counter,
 *                    kid, kcv)
 *       -> (records, counter) | None                  the decision-log writer's hot loop: encode
 *                                                      queued decisions (see writer.py
 *                                                      DecisionLog._encode), seal their personal
 *                                                      fields with AES-256-CTR, frame them as
 *                                                      records; None when an item needs the
 *                                                      Python path
 *   decision_layout() -> dict                          the decision layout this was compiled
 *                                                      with (_decisionlayout.h), for
 *                                                      format.decision_layout() to compare
 *   decision_columns(buf, start, end, key_for) -> tuple  in _decisionscan.c: the auditor's
 *                                                      column-wise reader of decision entries
 *   call_firsts(epoch, kind, lens, refs, width, key) -> bytes  in _decisionscan.c: the first
 *                                                      decision of each call
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_decisionlayout.h"

#define HASH 32
#define MAX_LEVELS 64

typedef struct {
    unsigned char h[MAX_LEVELS][HASH];
    int n;              /* number of hashes held */
    unsigned long long size;
} crange;

static void leaf_hash(const unsigned char *data, size_t len, unsigned char *out) {
    SHA256_CTX c;
    static const unsigned char zero = 0;
    SHA256_Init(&c);
    SHA256_Update(&c, &zero, 1);
    SHA256_Update(&c, data, len);
    SHA256_Final(out, &c);
}

static void node_hash(const unsigned char *l, const unsigned char *r, unsigned char *out) {
    /* Not the one-shot SHA256(): in OpenSSL 3 it fetches the algorithm on every call. */
    SHA256_CTX c;
    unsigned char buf[1 + 2 * HASH];
    buf[0] = 1;
    memcpy(buf + 1, l, HASH);
    memcpy(buf + 1 + HASH, r, HASH);
    SHA256_Init(&c);
    SHA256_Update(&c, buf, sizeof buf);
    SHA256_Final(out, &c);
}

static void crange_append(crange *cr, const unsigned char *leaf) {
    unsigned char h[HASH];
    unsigned long long s = cr->size;
    memcpy(h, leaf, HASH);
    /* Merge with the subtrees whose sizes are the trailing one-bits of size. */
    while (s & 1) {
        cr->n--;
        node_hash(cr->h[cr->n], h, h);
        s >>= 1;
    }
    memcpy(cr->h[cr->n], h, HASH);
    cr->n++;
    cr->size++;
}

static int crange_from_py(PyObject *list, unsigned long long size, crange *cr) {
    Py_ssize_t n;
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "range must be a list of 32-byte hashes");
        return -1;
    }
    n = PyList_GET_SIZE(list);
    if (n != __builtin_popcountll(size) || n > MAX_LEVELS) {
        PyErr_SetString(PyExc_ValueError, "range does not match its size");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) != HASH) {
            PyErr_SetString(PyExc_ValueError, "range hashes must be 32-byte bytes");
            return -1;
        }
        memcpy(cr->h[i], PyBytes_AS_STRING(item), HASH);
    }
    cr->n = (int)n;
    cr->size = size;
    return 0;
}

static PyObject *crange_to_py(const crange *cr) {
    PyObject *list = PyList_New(cr->n);
    if (!list) return NULL;
    for (int i = 0; i < cr->n; i++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)cr->h[i], HASH);
        if (!b) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, b);
    }
    return list;
}

/* The length of the record at p[*pos] (a u32 big-endian length, then that many bytes), with
 * *pos moved to its first byte; -1 if the record runs past len. */
static Py_ssize_t next_record(const unsigned char *p, Py_ssize_t len, Py_ssize_t *pos) {
    if (*pos + 4 > len) return -1;
    Py_ssize_t n = ((Py_ssize_t)p[*pos] << 24) | ((Py_ssize_t)p[*pos + 1] << 16) |
                   ((Py_ssize_t)p[*pos + 2] << 8) | (Py_ssize_t)p[*pos + 3];
    *pos += 4;
    return n > len - *pos ? -1 : n;
}

/* The first `probe` bytes of an entry of n bytes, zero-padded, for column-wise checks. */
static void put_probe(unsigned char *dst, Py_ssize_t probe, const unsigned char *e, Py_ssize_t n) {
    Py_ssize_t k = n < probe ? n : probe;
    memcpy(dst, e, k);
    memset(dst + k, 0, probe - k);
}

static PyObject *py_leaf_hashes(PyObject *self, PyObject *arg) {
    /* A tuple of our own: a list could be changed by another thread while the GIL is released. */
    PyObject *seq = PySequence_Tuple(arg);
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(items[i])) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "entries must be bytes");
            return NULL;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * HASH);
    if (!out) {
        Py_DECREF(seq);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    /* The sequence holds references to the (immutable) bytes, so their memory stays valid. */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        leaf_hash((const unsigned char *)PyBytes_AS_STRING(items[i]),
                  (size_t)PyBytes_GET_SIZE(items[i]), o + i * HASH);
    Py_END_ALLOW_THREADS
    Py_DECREF(seq);
    return out;
}

static PyObject *py_extend(PyObject *self, PyObject *args) {
    PyObject *list;
    unsigned long long size;
    Py_buffer leaves;
    crange cr;
    if (!PyArg_ParseTuple(args, "OKy*", &list, &size, &leaves)) return NULL;
    if (leaves.len % HASH || crange_from_py(list, size, &cr) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "leaf hashes must be a multiple of 32 bytes");
        PyBuffer_Release(&leaves);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < leaves.len; i += HASH)
        crange_append(&cr, (const unsigned char *)leaves.buf + i);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&leaves);
    PyObject *l = crange_to_py(&cr);
    if (!l) return NULL;
    return Py_BuildValue("(NK)", l, cr.size);
}

static PyObject *py_hash_records(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t offset, count, probe = 0;
    PyObject *list;
    unsigned long long size;
    crange cr;
    if (!PyArg_ParseTuple(args, "y*nnOK|n", &buf, &offset, &count, &list, &size, &probe))
        return NULL;
    if (probe < 0) probe = 0;
    if (crange_from_py(list, size, &cr) < 0 || offset < 0 || count < 0 ||
        count > (buf.len - offset) / 4 + 1) {
        /* every record takes at least its 4-byte length: a larger count cannot be right */
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad offset or count");
        PyBuffer_Release(&buf);
        return NULL;
    }
    PyObject *offsets = PyBytes_FromStringAndSize(NULL, count * 8);
    if (!offsets) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    uint64_t *offs = (uint64_t *)PyBytes_AS_STRING(offsets);
    /* probes: the first `probe` bytes of every entry (zero-padded), for column-wise checks */
    PyObject *probes = PyBytes_FromStringAndSize(NULL, count * probe);
    if (!probes) {
        Py_DECREF(offsets);
        PyBuffer_Release(&buf);
        return NULL;
    }
    unsigned char *pr = (unsigned char *)PyBytes_AS_STRING(probes);
    const unsigned char *p = (const unsigned char *)buf.buf;
    Py_ssize_t pos = offset, len = buf.len;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n = next_record(p, len, &pos);
        if (n < 0) { bad = 1; break; }
        unsigned char lh[HASH];
        leaf_hash(p + pos, n, lh);
        crange_append(&cr, lh);
        offs[i] = (uint64_t)pos;
        if (probe) put_probe(pr + i * probe, probe, p + pos, n);
        pos += n;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (bad) {
        Py_DECREF(offsets);
        Py_DECREF(probes);
        Py_RETURN_NONE;
    }
    PyObject *l = crange_to_py(&cr);
    if (!l) {
        Py_DECREF(offsets);
        Py_DECREF(probes);
        return NULL;
    }
    return Py_BuildValue("(NKnNN)", l, cr.size, pos, offsets, probes);
}


/* ---- decision encoding (mirrors DecisionLog._encode in writer.py; tests compare the two) ---- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} sbuf;

static int sb_reserve(sbuf *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more) cap *= 2;
    unsigned char *q = realloc(b->p, cap);
    if (!q) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = q;
    b->cap = cap;
    return 0;
}

static int sb_put(sbuf *b, const void *src, size_t n) {
    if (sb_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, src, n);
    b->n += n;
    return 0;
}

static int sb_field(sbuf *b, unsigned char tag, const unsigned char *v, size_t n) {
    unsigned char h[6];
    size_t hn;
    h[0] = tag;
    if (n < 0xFF) {
        h[1] = (unsigned char)n;
        hn = 2;
    } else {
        h[1] = 0xFF;
        h[2] = (unsigned char)(n >> 24);
        h[3] = (unsigned char)(n >> 16);
        h[4] = (unsigned char)(n >> 8);
        h[5] = (unsigned char)n;
        hn = 6;
    }
    if (sb_put(b, h, hn) < 0) return -1;
    return sb_put(b, v, n);
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static long long days_from_civil(long long y, unsigned m, unsigned d) {
    y -= m <= 2;
    const long long era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static PyObject *utc_singleton = NULL;

/* Microseconds since 1970 of an aware UTC datetime; -1 if it is not one (Python path). */
static long long micros_utc(PyObject *dt) {
    if (!PyDateTime_Check(dt)) return -1;
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(dt);
    if (tz != utc_singleton) return -1;
    long long days = days_from_civil(PyDateTime_GET_YEAR(dt), PyDateTime_GET_MONTH(dt),
                                     PyDateTime_GET_DAY(dt));
    long long secs = days * 86400 + PyDateTime_DATE_GET_HOUR(dt) * 3600 +
                     PyDateTime_DATE_GET_MINUTE(dt) * 60 + PyDateTime_DATE_GET_SECOND(dt);
    return secs * 1000000 + PyDateTime_DATE_GET_MICROSECOND(dt);
}

static void put_be(unsigned char *o, unsigned long long v, int n) {
    for (int i = n - 1; i >= 0; i--) {
        o[i] = (unsigned char)v;
        v >>= 8;
    }
}

/* items: a list of (ticket, record), record an instance of record_type (a tuple: the writer's
 * DecisionRecord); fields: the positions in the record of the draw, call reference, agent,
 * caller pseudonym, decision time and attributes. The fields before the draw are those prefix_for(record)
 * encodes, the same for long runs of decisions: they key the cache. */
static PyObject *py_encode_decisions(PyObject *self, PyObject *args) {
    PyObject *items, *record_type, *cache, *prefix_for;
    Py_ssize_t f_draw, f_ref, f_agent, f_pseudo, f_at, f_attrs;
    Py_buffer key, ivp, kid, kcv;
    unsigned long long counter;
    if (!PyArg_ParseTuple(args, "O!O!(nnnnnn)O!Oy*y*Ky*y*", &PyList_Type, &items, &PyType_Type,
                          &record_type, &f_draw, &f_ref, &f_agent, &f_pseudo, &f_at, &f_attrs,
                          &PyDict_Type, &cache, &prefix_for, &key, &ivp, &counter, &kid, &kcv))
        return NULL;
    PyObject *result = NULL;
    sbuf pub = {0}, plain = {0}, out = {0};
    Py_ssize_t n = PyList_GET_SIZE(items);
    size_t *pub_end = NULL, *plain_len = NULL;
    long long month = -1;
    EVP_CIPHER_CTX *ctx = NULL;
    Py_ssize_t f_max = f_draw;
    Py_ssize_t f_min = f_draw;
    const Py_ssize_t f_all[5] = {f_ref, f_agent, f_pseudo, f_at, f_attrs};
    for (int k = 0; k < 5; k++) {
        if (f_all[k] > f_max) f_max = f_all[k];
        if (f_all[k] < f_min) f_min = f_all[k];
    }
    if (key.len != 32 || ivp.len != 8 || kid.len > 64 || kcv.len != KCV_SIZE || f_min < 0) {
        PyErr_SetString(PyExc_ValueError, "bad key, iv prefix, kid or field positions");
        goto done;
    }
    pub_end = malloc(sizeof(size_t) * (n ? n : 1));
    plain_len = malloc(sizeof(size_t) * (n ? n : 1));
    if (!pub_end || !plain_len) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) goto fallback;
        PyObject *rec = PyTuple_GET_ITEM(it, 1);
        if (Py_TYPE(rec) != (PyTypeObject *)record_type) goto fallback; /* another entry */
        if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) <= f_max) {
            PyErr_SetString(PyExc_ValueError, "the field positions do not fit the record");
            goto done;
        }
        PyObject *draw = PyTuple_GET_ITEM(rec, f_draw), *ref = PyTuple_GET_ITEM(rec, f_ref);
        PyObject *agent = PyTuple_GET_ITEM(rec, f_agent), *pseudo = PyTuple_GET_ITEM(rec, f_pseudo);
        PyObject *attrs = PyTuple_GET_ITEM(rec, f_attrs);
        long long us = micros_utc(PyTuple_GET_ITEM(rec, f_at));
        if (us < 0 || pseudo != Py_None || !PyLong_Check(draw)) goto fallback;
        /* One sealing key per call: every decision must fall in the same UTC month. */
        long long days = us / 86400000000LL;
        {
            /* civil month of `days` */
            long long z = days + 719468;
            long long era = (z >= 0 ? z : z - 146096) / 146097;
            unsigned doe = (unsigned)(z - era * 146097);
            unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
            unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            unsigned mp = (5 * doy + 2) / 153;
            unsigned m = mp < 10 ? mp + 3 : mp - 9;
            long long y = (long long)yoe + era * 400 + (m <= 2);
            long long ym = y * 12 + m;
            if (month < 0) month = ym;
            else if (ym != month) goto fallback;
        }
        /* the fields shared by decisions of one epoch, policy, rule and reason: cached */
        PyObject *ckey = PyTuple_GetSlice(rec, 0, f_draw);
        if (!ckey) goto done;
        PyObject *fixed = PyDict_GetItemWithError(cache, ckey);
        if (fixed) {
            Py_INCREF(fixed);
        } else if (PyErr_Occurred()) {
            Py_DECREF(ckey);
            goto done;
        } else {
            fixed = PyObject_CallOneArg(prefix_for, rec);
            if (!fixed || PyDict_SetItem(cache, ckey, fixed) < 0) {
                Py_XDECREF(fixed);
                Py_DECREF(ckey);
                goto done;
            }
        }
        Py_DECREF(ckey);
        if (!PyTuple_Check(fixed) || PyTuple_GET_SIZE(fixed) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(fixed, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(fixed, 1))) {
            Py_DECREF(fixed);
            PyErr_SetString(PyExc_TypeError, "prefix_for must return (bytes, bytes)");
            goto done;
        }
        unsigned long long r = PyLong_AsUnsignedLongLong(draw);
        if (PyErr_Occurred() || r >> (8 * DRAW_SIZE)) {
            Py_DECREF(fixed);
            PyErr_Clear();
            goto fallback;
        }
        unsigned char hdr[ENTRY_HEADER];
        hdr[0] = ENTRY_VERSION;
        hdr[1] = T_DECISION;
        put_be(hdr + 2, (unsigned long long)us, 8);
        unsigned char dv[DRAW_SIZE]; /* the draw's value: prefix_for wrote its tag and length */
        put_be(dv, r, DRAW_SIZE);
        PyObject *pre = PyTuple_GET_ITEM(fixed, 0), *post = PyTuple_GET_ITEM(fixed, 1);
        int bad = sb_put(&pub, hdr, ENTRY_HEADER) < 0 ||
                  sb_put(&pub, PyBytes_AS_STRING(pre), PyBytes_GET_SIZE(pre)) < 0 ||
                  sb_put(&pub, dv, DRAW_SIZE) < 0 ||
                  sb_put(&pub, PyBytes_AS_STRING(post), PyBytes_GET_SIZE(post)) < 0;
        Py_DECREF(fixed);
        if (bad) goto done;
        pub_end[i] = pub.n;
        /* personal fields: the call ref (kind byte + bytes), the agent (no pseudonym: above),
         * the attributes */
        size_t start = plain.n;
        const char *rp;
        Py_ssize_t rn;
        unsigned char kind;
        if (PyUnicode_Check(ref)) {
            rp = PyUnicode_AsUTF8AndSize(ref, &rn);
            if (!rp) goto done;
            kind = REF_TEXT;
        } else if (PyBytes_Check(ref)) {
            rp = PyBytes_AS_STRING(ref);
            rn = PyBytes_GET_SIZE(ref);
            kind = REF_BYTES;
        } else {
            goto fallback;
        }
        unsigned char tmp[1 + 256];
        if (rn > 256) goto fallback;
        tmp[0] = kind;
        memcpy(tmp + 1, rp, rn);
        if (sb_field(&plain, TAG_CALL_REF, tmp, (size_t)rn + 1) < 0) goto done;
        if (agent != Py_None) {
            Py_ssize_t an;
            const char *ap;
            if (!PyUnicode_Check(agent)) goto fallback;
            ap = PyUnicode_AsUTF8AndSize(agent, &an);
            if (!ap) goto done;
            if (sb_field(&plain, TAG_AGENT, (const unsigned char *)ap, (size_t)an) < 0) goto done;
        }
        /* (a caller pseudonym, tag 0x22, would come here: such records take the Python path) */
        if (attrs != Py_None) {
            Py_ssize_t tn;
            const char *tp;
            if (!PyUnicode_Check(attrs)) goto fallback;
            tp = PyUnicode_AsUTF8AndSize(attrs, &tn);
            if (!tp) goto done;
            if (sb_field(&plain, TAG_ATTRIBUTES, (const unsigned char *)tp, (size_t)tn) < 0)
                goto done;
        }
        plain_len[i] = plain.n - start;
        /* pad to a whole number of AES blocks: each entry starts on a fresh counter block */
        size_t pad = (16 - plain_len[i] % 16) % 16;
        if (sb_reserve(&plain, pad) < 0) goto done;
        memset(plain.p + plain.n, 0, pad);
        plain.n += pad;
    }
    {
        /* one AES-256-CTR keystream for the batch, from prefix || counter */
        unsigned char iv[IV_SIZE];
        memcpy(iv, ivp.buf, 8);
        put_be(iv + 8, counter, 8);
        int outl = 0;
        ctx = EVP_CIPHER_CTX_new();
        if (!ctx || !EVP_EncryptInit_ex(ctx, EVP_aes_256_ctr(), NULL, key.buf, iv) ||
            (plain.n && !EVP_EncryptUpdate(ctx, plain.p, &outl, plain.p, (int)plain.n))) {
            PyErr_SetString(PyExc_RuntimeError, "AES-256-CTR failed");
            goto done;
        }
    }
    {
        size_t pub_start = 0, ct_pos = 0;
        unsigned long long block = counter;
        for (Py_ssize_t i = 0; i < n; i++) {
            size_t pl = plain_len[i];
            size_t body = 1 + (size_t)kid.len + KCV_SIZE + IV_SIZE + pl;
            size_t field_hdr = body < 0xFF ? 2 : 6;
            size_t entry = (pub_end[i] - pub_start) + field_hdr + body;
            unsigned char rec[4];
            put_be(rec, entry, 4);
            unsigned char iv[IV_SIZE];
            memcpy(iv, ivp.buf, 8);
            put_be(iv + 8, block, 8);
            unsigned char kl = (unsigned char)kid.len;
            unsigned char fh[6] = {TAG_SEALED, 0, 0, 0, 0, 0};
            if (body < 0xFF) {
                fh[1] = (unsigned char)body;
            } else {
                fh[1] = 0xFF;
                put_be(fh + 2, body, 4);
            }
            if (sb_put(&out, rec, 4) < 0 || sb_put(&out, pub.p + pub_start, pub_end[i] - pub_start) < 0 ||
                sb_put(&out, fh, field_hdr) < 0 || sb_put(&out, &kl, 1) < 0 ||
                sb_put(&out, kid.buf, kid.len) < 0 || sb_put(&out, kcv.buf, KCV_SIZE) < 0 ||
                sb_put(&out, iv, IV_SIZE) < 0 ||
                sb_put(&out, plain.p + ct_pos, pl) < 0)
                goto done;
            size_t padded = (pl + 15) & ~(size_t)15;
            ct_pos += padded;
            block += padded / 16;
            pub_start = pub_end[i];
        }
        PyObject *records = PyBytes_FromStringAndSize((const char *)out.p, (Py_ssize_t)out.n);
        if (!records) goto done;
        result = Py_BuildValue("(NK)", records, block);
    }
    goto done;
fallback:
    result = Py_None;
    Py_INCREF(result);
done:
    if (ctx) EVP_CIPHER_CTX_free(ctx);
    if (plain.p) OPENSSL_cleanse(plain.p, plain.cap); /* personal plaintext: wipe */
    free(pub.p);
    free(plain.p);
    free(out.p);
    free(pub_end);
    free(plain_len);
    PyBuffer_Release(&key);
    PyBuffer_Release(&ivp);
    PyBuffer_Release(&kid);
    PyBuffer_Release(&kcv);
    return result;
}



/* Is this a well-formed v1 entry: version 1, a 10-byte header, then fields (tag, length,
 * value) that end exactly at the end, tags strictly ascending? */
static int entry_ok(const unsigned char *e, size_t n) {
    if (n < ENTRY_HEADER || e[0] != ENTRY_VERSION) return 0;
    size_t pos = ENTRY_HEADER;
    int last = -1;
    while (pos < n) {
        if (pos + 2 > n) return 0;
        int tag = e[pos];
        size_t len = e[pos + 1];
        pos += 2;
        if (len == 0xFF) {
            if (pos + 4 > n) return 0;
            len = ((size_t)e[pos] << 24) | ((size_t)e[pos + 1] << 16) | ((size_t)e[pos + 2] << 8) |
                  (size_t)e[pos + 3];
            pos += 4;
        }
        if (tag <= last || len > n - pos) return 0;
        last = tag;
        pos += len;
    }
    return 1;
}

static PyObject *py_leaf_records(PyObject *self, PyObject *args) {
    /* Like hash_records, but only the leaf hashes (no tree): safe to run on several threads. */
    Py_buffer buf;
    Py_ssize_t offset, count, probe = 0;
    if (!PyArg_ParseTuple(args, "y*nn|n", &buf, &offset, &count, &probe)) return NULL;
    if (probe < 0) probe = 0;
    if (offset < 0 || count < 0 || offset > buf.len || count > (buf.len - offset) / 4 + 1) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "bad offset or count");
        return NULL;
    }
    PyObject *offsets = PyBytes_FromStringAndSize(NULL, count * 8);
    PyObject *probes = PyBytes_FromStringAndSize(NULL, count * probe);
    PyObject *leaves = PyBytes_FromStringAndSize(NULL, count * HASH);
    PyObject *valid = PyBytes_FromStringAndSize(NULL, count);
    if (!offsets || !probes || !leaves || !valid) {
        Py_XDECREF(offsets);
        Py_XDECREF(probes);
        Py_XDECREF(leaves);
        Py_XDECREF(valid);
        PyBuffer_Release(&buf);
        return NULL;
    }
    unsigned char *ok = (unsigned char *)PyBytes_AS_STRING(valid);
    uint64_t *offs = (uint64_t *)PyBytes_AS_STRING(offsets);
    unsigned char *pr = (unsigned char *)PyBytes_AS_STRING(probes);
    unsigned char *lv = (unsigned char *)PyBytes_AS_STRING(leaves);
    const unsigned char *p = (const unsigned char *)buf.buf;
    Py_ssize_t pos = offset, len = buf.len;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n = next_record(p, len, &pos);
        if (n < 0) { bad = 1; break; }
        leaf_hash(p + pos, n, lv + i * HASH);
        ok[i] = (unsigned char)entry_ok(p + pos, n);
        offs[i] = (uint64_t)pos;
        if (probe) put_probe(pr + i * probe, probe, p + pos, n);
        pos += n;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (bad) {
        Py_DECREF(offsets);
        Py_DECREF(probes);
        Py_DECREF(leaves);
        Py_DECREF(valid);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(nNNNN)", pos, offsets, probes, leaves, valid);
}

/* CPython's collector stops tracking a plain tuple that holds only values that cannot be part
 * of a cycle (str, bytes, int, None, datetime, untracked tuples), but never an instance of a
 * tuple subclass such as a named tuple, nor a tuple holding one. The log queues decision records
 * (named tuples, in (ticket, record) pairs) until its writer takes them, up to max_batch of them:
 * left tracked, each collection would traverse them all. untrack(t) does for t, and for the
 * tuples in it, what the collector does for plain tuples; a tuple whose type adds storage (a
 * __dict__) or that holds anything else that can be tracked stays tracked. Returns t. */
static int untrack_tuple(PyObject *t, int depth) {
    if (!PyObject_GC_IsTracked(t)) return 1;
    PyTypeObject *tp = Py_TYPE(t);
    if (depth > 3 || tp->tp_dictoffset != 0 || tp->tp_basicsize != PyTuple_Type.tp_basicsize)
        return 0;
    for (Py_ssize_t i = 0, n = PyTuple_GET_SIZE(t); i < n; i++) {
        PyObject *e = PyTuple_GET_ITEM(t, i);
        /* a tuple once untracked stays so: it cannot change */
        if (PyObject_IS_GC(e) && (!PyTuple_Check(e) || !untrack_tuple(e, depth + 1))) return 0;
    }
    PyObject_GC_UnTrack(t);
    return 1;
}

static PyObject *py_untrack(PyObject *self, PyObject *t) {
    if (PyTuple_Check(t)) untrack_tuple(t, 0);
    Py_INCREF(t);
    return t;
}

static PyObject *py_decision_layout(PyObject *self, PyObject *unused) {
    return Py_BuildValue(
        "{s:i,s:i,s:i,s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i},s:i,s:i,s:i,s:i,s:i}",
        "format_version", ENTRY_VERSION, "header_size", ENTRY_HEADER, "entry_type", T_DECISION,
        "tags", "epoch_id", TAG_EPOCH_ID, "policy_version", TAG_POLICY_VERSION, "rule", TAG_RULE,
        "threshold", TAG_THRESHOLD, "draw", TAG_DRAW, "reason", TAG_REASON, "call_ref",
        TAG_CALL_REF, "agent", TAG_AGENT, "caller_pseudonym", TAG_CALLER_PSEUDONYM,
        "attributes", TAG_ATTRIBUTES, "sealed", TAG_SEALED, "draw_size", DRAW_SIZE, "ref_bytes", REF_BYTES, "ref_text", REF_TEXT,
        "kcv_size", KCV_SIZE, "iv_size", IV_SIZE);
}

/* in _decisionscan.c */
PyObject *py_decision_columns(PyObject *self, PyObject *args);
PyObject *py_call_firsts(PyObject *self, PyObject *args);

static PyMethodDef methods[] = {
    {"leaf_hashes", py_leaf_hashes, METH_O, "SHA-256(0x00 || e) of each entry, concatenated."},
    {"extend", py_extend, METH_VARARGS, "Append 32-byte leaf hashes to a compact range."},
    {"hash_records", py_hash_records, METH_VARARGS,
     "Hash length-prefixed records and extend a compact range."},
    {"leaf_records", py_leaf_records, METH_VARARGS,
     "Leaf hashes of length-prefixed records (no tree; thread-safe)."},
    {"encode_decisions", py_encode_decisions, METH_VARARGS,
     "Encode, seal and frame queued decisions (the log writer's hot loop)."},
    {"decision_columns", py_decision_columns, METH_VARARGS,
     "The decision entries of one batch as columns, unsealed (the auditor's reader)."},
    {"call_firsts", py_call_firsts, METH_VARARGS,
     "For each decision, the row of the first decision of the same call (exact)."},
    {"untrack", py_untrack, METH_O,
     "Stop the collector tracking a tuple (and the tuples in it) that cannot be part of a cycle."},
    {"decision_layout", py_decision_layout, METH_NOARGS,
     "The decision layout (tags, sizes) this accelerator was compiled with."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_merklefast", "Batched RFC 6962 hashing (optional accelerator).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__merklefast(void) {
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    PyObject *m = PyImport_ImportModule("datetime");
    if (!m) return NULL;
    PyObject *tzcls = PyObject_GetAttrString(m, "timezone");
    Py_DECREF(m);
    if (!tzcls) return NULL;
    utc_singleton = PyObject_GetAttrString(tzcls, "utc");
    Py_DECREF(tzcls);
    if (!utc_singleton) return NULL;
    return PyModule_Create(&module);
}
