/*
 * Optional accelerator for the log's RFC 6962 Merkle hashing (see _hashing.py).
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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

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

static PyObject *py_leaf_hashes(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "entries must be a sequence of bytes");
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
    if (crange_from_py(list, size, &cr) < 0 || offset < 0 || count < 0) {
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
        if (pos + 4 > len) { bad = 1; break; }
        uint32_t n = ((uint32_t)p[pos] << 24) | ((uint32_t)p[pos + 1] << 16) |
                     ((uint32_t)p[pos + 2] << 8) | (uint32_t)p[pos + 3];
        pos += 4;
        if ((Py_ssize_t)n > len - pos) { bad = 1; break; }
        unsigned char lh[HASH];
        leaf_hash(p + pos, n, lh);
        crange_append(&cr, lh);
        offs[i] = (uint64_t)pos;
        if (probe) {
            Py_ssize_t k = (Py_ssize_t)n < probe ? (Py_ssize_t)n : probe;
            memcpy(pr + i * probe, p + pos, k);
            memset(pr + i * probe + k, 0, probe - k);
        }
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

static PyMethodDef methods[] = {
    {"leaf_hashes", py_leaf_hashes, METH_O, "SHA-256(0x00 || e) of each entry, concatenated."},
    {"extend", py_extend, METH_VARARGS, "Append 32-byte leaf hashes to a compact range."},
    {"hash_records", py_hash_records, METH_VARARGS,
     "Hash length-prefixed records and extend a compact range."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_merklefast", "Batched RFC 6962 hashing (optional accelerator).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__merklefast(void) { return PyModule_Create(&module); }
