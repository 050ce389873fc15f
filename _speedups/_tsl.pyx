# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``protocols.tsl.normalize`` (the owner picks it; see ``_speedups``).

A different algorithm for the same rule, for speed: a per-schema plan holds each property's kind
as a C int, the common exact-type cases (``bool``/``int``/``float``/``str`` values of a bool, int,
float, timestamp, enum or string property) are decided in C, and for a plain dict the result is a
copy of the input with only the changed values replaced. Every other case is handed to the
owner's pure ``coerce``, so the rule itself is written once, in ``protocols/tsl.py``.

It imports nothing of ``protocols``: ``protocols.tsl`` calls ``configure(...)`` at import with
its rule (``coerce``), its "does not fit" sentinel, its bool spellings and the seconds/ms bound
of timestamps, and gets the kernel back. Hypothesis tests hold it equal to the pure rule for
every schema type and number spelling (tests/speedups/test_speedups.py).
"""

cimport cython
from cpython.dict cimport PyDict_Contains, PyDict_Copy, PyDict_GetItem, PyDict_Next, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_FromLongLong
from cpython.object cimport PyObject
from libc.math cimport isfinite


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


# Set by configure(): the owner's rule and constants.
cdef bint _configured = False
cdef object _coerce = None        # protocols.tsl.coerce(prop, value) -> value or _NC
cdef object _NC = None            # protocols.tsl.NOT_COERCIBLE
cdef frozenset _TRUE = frozenset()
cdef frozenset _FALSE = frozenset()
cdef long long _MS_FROM = 0       # a positive timestamp below it is seconds


def configure(*, coerce, not_coercible, true_words, false_words, ms_from):
    """Bind the owner's rule and constants; returns ``normalize``. Called by ``protocols.tsl``."""
    global _configured, _coerce, _NC, _TRUE, _FALSE, _MS_FROM
    _coerce = coerce
    _NC = not_coercible
    _TRUE = frozenset(true_words)
    _FALSE = frozenset(false_words)
    _MS_FROM = ms_from
    _PLANS.clear()
    _configured = True
    return normalize


def configuration():
    """What ``configure`` bound (a test hook: the constants are the owner's, not copies)."""
    return {"coerce": _coerce, "not_coercible": _NC, "true_words": _TRUE, "false_words": _FALSE,
            "ms_from": _MS_FROM}


cdef enum:
    K_OTHER = 0
    K_BOOL = 1
    K_INT = 2
    K_FLOAT = 3
    K_TIMESTAMP = 4
    K_ENUM = 5
    K_STRING = 6
    K_GENERIC = 7  # struct, array: the owner's coerce


_KIND_CODES = {
    "bool": K_BOOL, "int": K_INT, "float": K_FLOAT, "timestamp": K_TIMESTAMP, "enum": K_ENUM,
    "string": K_STRING, "struct": K_GENERIC, "array": K_GENERIC,
}


cdef int _kind_code(object kind) except -1:
    return _KIND_CODES.get(kind, K_OTHER)


cdef inline object _ascii_int(object text):
    """``int(text)`` for a plain ``[+-]?digits`` ASCII str of at most 18 digits, else None.

    ``int()`` of such a string is its decimal value, so this is exact; every other spelling
    (whitespace, underscores, non-ASCII digits, longer numbers) takes the reference rule."""
    if not PyUnicode_IS_COMPACT_ASCII(text):
        return None
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    cdef const unsigned char* s = <const unsigned char*>PyUnicode_DATA(text)
    cdef Py_ssize_t i = 0
    cdef bint neg = False
    cdef long long v = 0
    cdef unsigned char c
    if n and (s[0] == 45 or s[0] == 43):  # '-' '+'
        neg = s[0] == 45
        i = 1
    if n - i < 1 or n - i > 18:
        return None
    while i < n:
        c = s[i]
        if c < 48 or c > 57:
            return None
        v = v * 10 + (c - 48)
        i += 1
    return PyLong_FromLongLong(-v if neg else v)


@cython.final
cdef class _Entry:
    """One property of a schema, ready for the hot loop: its kind as a C int, and its enum."""
    cdef int code
    cdef object prop
    cdef object enum


cdef object _coerce_entry(_Entry e, object value):
    """The owner's ``coerce(e.prop, value)``, with the common exact-type cases decided in C."""
    cdef int code = e.code
    cdef int overflow
    cdef long iv
    cdef double d
    cdef object vt = type(value)
    if code == K_BOOL:
        if value is True or value is False:
            return value
        if vt is int:
            iv = PyLong_AsLongAndOverflow(value, &overflow)
            if overflow == 0:
                if iv == 1:
                    return True
                if iv == 0:
                    return False
            return _NC
        if vt is float:
            d = PyFloat_AS_DOUBLE(value)
            if d == 1.0:
                return True
            if d == 0.0:
                return False
            return _NC
        if vt is str:
            low = (<str>value).strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            return _NC
        return _coerce(e.prop, value)
    if code == K_INT:
        if vt is int:
            return value
        if vt is str:
            fast = _ascii_int(value)
            if fast is not None:
                return fast
        return _coerce(e.prop, value)
    if code == K_FLOAT:
        if vt is float:
            return value if isfinite(PyFloat_AS_DOUBLE(value)) else _NC
        if vt is int:
            return value
        return _coerce(e.prop, value)
    if code == K_TIMESTAMP:
        if vt is int:
            iv = PyLong_AsLongAndOverflow(value, &overflow)
            if overflow == 0 and 0 < iv < _MS_FROM:
                return PyLong_FromLongLong(<long long>iv * 1000)
            return value
        return _coerce(e.prop, value)
    if code == K_ENUM:
        enum = e.enum
        if enum is None:
            return value
        if type(enum) is dict and (vt is int or vt is str) and PyDict_Contains(enum, value) == 1:
            return value
        return _coerce(e.prop, value)
    if code == K_STRING:
        if vt is str:
            return value
        return _coerce(e.prop, value)
    if code == K_OTHER:
        return value
    return _coerce(e.prop, value)  # K_GENERIC: struct, array


# Per-schema plans: prop id -> _Entry. Schemas are immutable (frozen dataclasses built once per
# product), so a plan is built on first use; the cache holds the schema itself so its id() cannot
# be reused while cached, and is cleared when it grows past _PLAN_LIMIT. The last schema used is
# checked first (by identity), which skips the attribute and cache lookups on a run of one product.
cdef dict _PLANS = {}
cdef Py_ssize_t _PLAN_LIMIT = 1024
cdef object _last_schema = None
cdef dict _last_plan = None


cdef dict _plan(object schema, dict by_id):
    key = id(schema)
    cdef PyObject* found = PyDict_GetItem(_PLANS, key)
    if found is not NULL and (<tuple>found)[0] is schema:
        return <dict>(<tuple>found)[1]
    cdef dict plan = {}
    cdef _Entry e
    for pid, p in by_id.items():
        e = _Entry.__new__(_Entry)
        e.code = _kind_code(p.type)
        e.prop = p
        e.enum = p.enum if e.code == K_ENUM else None
        plan[pid] = e
    if len(_PLANS) >= _PLAN_LIMIT:
        _PLANS.clear()
    _PLANS[key] = (schema, plan)
    return plan


def normalize(schema, props):
    """``protocols.tsl.normalize``: coerce every described property, flag misfits."""
    global _last_schema, _last_plan
    if not _configured:
        raise RuntimeError("_speedups._tsl.normalize used before protocols.tsl configured it")
    cdef dict out
    cdef list flagged = []
    cdef PyObject* found
    cdef dict plan = None
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t size
    cdef PyObject* k
    cdef PyObject* v
    if schema is _last_schema:
        plan = _last_plan
    else:
        by_id = getattr(schema, "_by_id", None)
        if type(by_id) is dict:
            plan = _plan(schema, <dict>by_id)
            _last_schema = schema
            _last_plan = plan
    if plan is not None and type(props) is dict:
        # A copy of props (one clone of its key table, same order), then only the values that
        # coercion changes are replaced: equal, key order included, to the reference's fresh dict.
        out = PyDict_Copy(props)
        size = PyDict_Size(props)
        while PyDict_Next(props, &pos, &k, &v):
            key = <object>k
            value = <object>v
            if type(key) is str:
                found = PyDict_GetItem(plan, key)
                if found is NULL:
                    continue
                coerced = _coerce_entry(<_Entry>found, value)
            else:
                prop = schema.prop(key)  # the same lookup (and errors) as the reference
                if prop is None:
                    continue
                coerced = _coerce(prop, value)
            if coerced is _NC:
                flagged.append(key)
            elif coerced is not value:
                out[key] = coerced
            if PyDict_Size(props) != size:
                raise RuntimeError("dictionary changed size during iteration")
        return out, flagged
    out = {}
    for key, value in props.items():
        if plan is not None and type(key) is str:
            found = PyDict_GetItem(plan, key)
            if found is NULL:
                out[key] = value
                continue
            coerced = _coerce_entry(<_Entry>found, value)
        else:
            prop = schema.prop(key)  # the same lookup (and errors) as the reference
            if prop is None:
                out[key] = value
                continue
            coerced = _coerce(prop, value)
        if coerced is _NC:
            flagged.append(key)
            out[key] = value
        else:
            out[key] = coerced
    return out, flagged
