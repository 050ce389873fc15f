# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``gateway.mqtt.codec.encode_publish`` (the owner picks it; see ``_speedups``).

One PUBLISH packet in one allocation. Unusual argument types or sizes go to the owner's pure
``encode_publish``, so errors are its. It imports nothing of ``gateway``: the codec calls
``configure(...)`` at import with its pure function and its limits (the largest remaining length,
the largest two-byte field) and gets the kernel back.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongAndOverflow
from libc.string cimport memcpy


# Set by configure(): the owner's pure rule (unusual arguments go there, so errors are its) and
# its limits.
cdef bint _configured = False
cdef object _encode_publish_ref = None
cdef Py_ssize_t _MAX_REMAINING = 0
cdef Py_ssize_t _MAX_FIELD = 0


def configure(*, encode_publish_py, max_remaining, max_field):
    """Bind the owner's pure ``encode_publish`` and its limits; returns the compiled one."""
    global _configured, _encode_publish_ref, _MAX_REMAINING, _MAX_FIELD
    _encode_publish_ref = encode_publish_py
    _MAX_REMAINING = max_remaining
    _MAX_FIELD = max_field
    _configured = True
    return encode_publish


def configuration():
    """What ``configure`` bound (a test hook: the limits are the owner's, not copies)."""
    return {"encode_publish_py": _encode_publish_ref, "max_remaining": _MAX_REMAINING,
            "max_field": _MAX_FIELD}


def encode_publish(topic, payload, qos=0, retain=False, packet_id=0, props=None, dup=False):
    cdef bytes tb
    if not _configured:
        raise RuntimeError("_speedups._mqtt used before gateway.mqtt.codec configured it")
    if type(topic) is str:
        tb = (<str>topic).encode("utf-8")
    elif type(topic) is bytes:
        tb = <bytes>topic
    else:
        return _encode_publish_ref(topic, payload, qos, retain, packet_id, props, dup)
    if (type(payload) is not bytes or type(qos) is not int or not (0 <= qos <= 3)
            or (props is not None and type(props) is not bytes)):
        return _encode_publish_ref(topic, payload, qos, retain, packet_id, props, dup)
    cdef int q = qos
    cdef long pid = 0
    cdef int overflow = 0
    if q:
        if type(packet_id) is not int:
            return _encode_publish_ref(topic, payload, qos, retain, packet_id, props, dup)
        pid = PyLong_AsLongAndOverflow(packet_id, &overflow)  # compared in C, not as objects
        if overflow or not (0 <= pid <= _MAX_FIELD):
            return _encode_publish_ref(topic, payload, qos, retain, packet_id, props, dup)
    cdef Py_ssize_t tlen = PyBytes_GET_SIZE(tb)
    if tlen > _MAX_FIELD:
        return _encode_publish_ref(topic, payload, qos, retain, packet_id, props, dup)
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(props) if props is not None else 0
    cdef Py_ssize_t blen = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t n = 2 + tlen + (2 if q else 0) + plen + blen
    if n > _MAX_REMAINING:
        return _encode_publish_ref(topic, payload, qos, retain, packet_id, props, dup)
    cdef unsigned char first = 0x30 | (q << 1) | (1 if retain else 0) | (8 if dup else 0)
    cdef unsigned char hdr[5]
    cdef int hlen = 1
    cdef Py_ssize_t rem = n
    hdr[0] = first
    while True:
        hdr[hlen] = rem & 0x7F
        rem >>= 7
        if rem:
            hdr[hlen] |= 0x80
            hlen += 1
        else:
            hlen += 1
            break
    out = PyBytes_FromStringAndSize(NULL, hlen + n)
    cdef unsigned char* d = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(d, hdr, hlen)
    d += hlen
    d[0] = (tlen >> 8) & 0xFF
    d[1] = tlen & 0xFF
    memcpy(d + 2, PyBytes_AS_STRING(tb), tlen)
    d += 2 + tlen
    if q:
        d[0] = (pid >> 8) & 0xFF
        d[1] = pid & 0xFF
        d += 2
    if plen:
        memcpy(d, PyBytes_AS_STRING(props), plen)
        d += plen
    memcpy(d, PyBytes_AS_STRING(payload), blen)
    return out
