# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``protocols.tencent.push`` (the owner picks it; see ``_speedups``).

``decode_payload`` does base64 (both alphabets, optional padding) and NUL removal in one pass
over the input into one output buffer, instead of the pure rule's strip → translate → pad →
decode → replace chain of five temporary objects; orjson then parses the buffer.

``tencent_report`` is the whole Tencent push decode in one call. The outer frame is read by a
strict scanner over its bytes that finds the six ``params`` values and the two top-level ones
without building the frame's dicts and strings; anything outside the subset of JSON it reads
(escapes, non-ASCII, floats, nesting, a needed key twice, …) makes it decline, and the owner's
pure ``tencent_report`` answers instead, so the answer is always the rule's. Then the base64 pass
above straight from the frame's bytes, orjson for the device's message, and a C parser for the
seed's ``Time`` layout (``YYYY-MM-DDTHH:MM:SS±HH:MM``; anything else goes to the owner's pure
``tencent_time_ms``).

It imports nothing of ``protocols``: ``protocols.tencent.push`` calls ``configure(...)`` at import
with its error class, its pure rules (declined cases go there) and its constants (the day bound of
device timestamps, the seconds/ms bound, the Types and SubTypes of a report), and gets the four
kernels back. Hypothesis tests hold them equal to the pure rules.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Contains, PyDict_Copy, PyDict_GetItem, PyDict_Next, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_FromLongLong
from cpython.object cimport PyObject
from libc.limits cimport LLONG_MIN
from libc.math cimport floor, isfinite
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy, memset, strlen

import orjson


cdef object _loads = orjson.loads
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef unsigned char _TABLE[256]


cdef void _init_table():
    cdef int i
    memset(_TABLE, 0xFF, 256)
    for i in range(26):
        _TABLE[65 + i] = i
        _TABLE[97 + i] = 26 + i
    for i in range(10):
        _TABLE[48 + i] = 52 + i
    _TABLE[43] = 62   # '+'
    _TABLE[45] = 62   # '-'
    _TABLE[47] = 63   # '/'
    _TABLE[95] = 63   # '_'


_init_table()


cdef inline bint _is_space(unsigned char c):
    return c == 32 or (9 <= c <= 13)


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


cdef object _b64_decode(const unsigned char* src, Py_ssize_t size):
    """base64 (either alphabet, padding optional, surrounding whitespace ignored) → bytes with
    NULs removed, or PayloadError with the pure rule's messages. Four characters per step into a
    stack buffer (heap for big payloads), one bytes object at the end."""
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end = size
    while start < end and _is_space(src[start]):
        start += 1
    while end > start and _is_space(src[end - 1]):
        end -= 1
    while end > start and src[end - 1] == 61:  # '='
        end -= 1
    cdef Py_ssize_t n = end - start
    cdef Py_ssize_t rem = n % 4
    if rem == 1:
        raise PayloadError("truncated base64 payload")
    cdef Py_ssize_t cap = (n // 4) * 3 + 3
    cdef unsigned char stack[2048]
    cdef unsigned char* dst = stack
    if cap > 2048:
        dst = <unsigned char*>malloc(cap)
        if dst == NULL:
            raise MemoryError()
    cdef Py_ssize_t i = start
    cdef Py_ssize_t full = end - rem
    cdef Py_ssize_t k = 0
    cdef unsigned int a, b, c, d
    cdef const unsigned char* nul
    cdef Py_ssize_t j
    try:
        while i < full:
            a = _TABLE[src[i]]
            b = _TABLE[src[i + 1]]
            c = _TABLE[src[i + 2]]
            d = _TABLE[src[i + 3]]
            if (a | b | c | d) & 0x80:
                raise PayloadError("invalid base64 payload")
            a = (a << 18) | (b << 12) | (c << 6) | d
            dst[k] = (a >> 16) & 0xFF
            dst[k + 1] = (a >> 8) & 0xFF
            dst[k + 2] = a & 0xFF
            k += 3
            i += 4
        if rem:
            a = _TABLE[src[i]]
            b = _TABLE[src[i + 1]]
            c = _TABLE[src[i + 2]] if rem == 3 else 0
            if (a | b | c) & 0x80:
                raise PayloadError("invalid base64 payload")
            dst[k] = ((a << 2) | (b >> 4)) & 0xFF
            k += 1
            if rem == 3:
                dst[k] = (((b & 0x0F) << 4) | (c >> 2)) & 0xFF
                k += 1
        nul = <const unsigned char*>memchr(dst, 0, k)
        if nul != NULL:
            # NULs are rare (the seed's SDK strips them); squeeze them out in place.
            i = nul - dst
            for j in range(i, k):
                if dst[j] != 0:
                    dst[i] = dst[j]
                    i += 1
            k = i
        return PyBytes_FromStringAndSize(<char*>dst, k)
    finally:
        if dst != stack:
            free(dst)


cdef object _b64_nul_stripped(object data):
    """``data`` (str or bytes-like) → decoded bytes; PayloadError like the pure rule."""
    cdef bytes raw
    if type(data) is str and PyUnicode_IS_COMPACT_ASCII(data):
        return _b64_decode(<const unsigned char*>PyUnicode_DATA(data), PyUnicode_GET_LENGTH(data))
    if type(data) is bytes:
        return _b64_decode(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    if isinstance(data, str):
        try:
            raw = (<str>data).encode("ascii")
        except UnicodeEncodeError:
            raise PayloadError("payload is not ASCII base64") from None
    elif isinstance(data, bytes):
        raw = bytes(data)
    elif isinstance(data, (bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise PayloadError(f"payload must be str or bytes, not {type(data).__name__}")
    return _b64_decode(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))


def decode_payload(data):
    _check()
    buf = _b64_nul_stripped(data)
    try:
        return _loads(buf)
    except _JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from None


# --------------------------------------------------------------------------------------------
# Tencent DeviceChange


# Set by configure(): the owner's error class, pure rules and constants.
cdef bint _configured = False
cdef object PayloadError = None
cdef object _fallback_time = None     # push.tencent_time_ms_py
cdef object _device_ts_py = None      # push.device_ts_py
cdef object _report_general = None    # push.tencent_report_py: frames the scanner declines
cdef long long _DAY_MS = 0
cdef long long _MS_FROM = 0           # below: seconds; from here on: already milliseconds
cdef tuple _NOT_REPORT = ()           # ASCII bytes of push.NOT_REPORT_TYPES
cdef tuple _SUBTYPES = ()             # ASCII bytes of push.REPORT_SUBTYPES
cdef frozenset _NOT_REPORT_STR = frozenset()
cdef tuple _SUBTYPES_STR = ()
# C-typed, so the comparisons below stay in C (a bare literal this big is a Python int to Cython).
cdef long long _TS_BOUND = 4_000_000_000_000_000_000  # no overflow in ms * 1000 or ms - fallback


def configure(*, payload_error, time_ms_py, device_ts_py, report_py, day_ms, ms_from,
              not_report_types, report_subtypes):
    """Bind the owner's rules and constants; returns ``(decode_payload, tencent_time_ms,
    device_ts, tencent_report)``. Called by ``protocols.tencent.push``."""
    global _configured, PayloadError, _fallback_time, _device_ts_py, _report_general
    global _DAY_MS, _MS_FROM, _NOT_REPORT, _SUBTYPES, _NOT_REPORT_STR, _SUBTYPES_STR
    PayloadError = payload_error
    _fallback_time = time_ms_py
    _device_ts_py = device_ts_py
    _report_general = report_py
    _DAY_MS = day_ms
    _MS_FROM = ms_from
    _NOT_REPORT_STR = frozenset(not_report_types)
    _SUBTYPES_STR = tuple(report_subtypes)
    _NOT_REPORT = tuple(t.encode("ascii") for t in _NOT_REPORT_STR)
    _SUBTYPES = tuple(t.encode("ascii") for t in _SUBTYPES_STR)
    _configured = True
    return decode_payload, tencent_time_ms, device_ts, tencent_report


def configuration():
    """What ``configure`` bound (a test hook: the constants are the owner's, not copies)."""
    return {"payload_error": PayloadError, "time_ms_py": _fallback_time,
            "device_ts_py": _device_ts_py, "report_py": _report_general, "day_ms": _DAY_MS, "ms_from": _MS_FROM,
            "not_report_types": _NOT_REPORT_STR, "report_subtypes": _SUBTYPES_STR}


cdef inline int _check() except -1:
    if not _configured:
        raise RuntimeError("_speedups._tencent used before protocols.tencent.push configured it")
    return 0


cdef inline int _digits(const unsigned char* s, int n):
    """Value of n ASCII digits, or -1."""
    cdef int v = 0
    cdef int i
    for i in range(n):
        if s[i] < 48 or s[i] > 57:
            return -1
        v = v * 10 + (s[i] - 48)
    return v


cdef inline bint _leap(long y):
    return (y % 4 == 0 and y % 100 != 0) or y % 400 == 0


cdef int[13] _MDAYS = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


cdef long long _days_from_civil(long y, long m, long d):
    # Howard Hinnant's algorithm, proleptic Gregorian, days since 1970-01-01.
    y -= m <= 2
    cdef long era = (y if y >= 0 else y - 399) // 400
    cdef long yoe = y - era * 400
    cdef long doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef long doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef long long _NO_TIME = LLONG_MIN


cdef long long _iso_ms(const unsigned char* s) noexcept:
    """The 25 characters at ``s`` as ``YYYY-MM-DDTHH:MM:SS±HH:MM`` → epoch ms, or ``_NO_TIME``
    when they are not that layout or not a valid date (the caller then asks the pure rule)."""
    cdef int year, month, day, hh, mm, ss, oh, om, mdays
    cdef long long secs
    if (s[4] == 45 and s[7] == 45 and s[10] == 84 and s[13] == 58 and s[16] == 58
            and (s[19] == 43 or s[19] == 45) and s[22] == 58):
        year = _digits(s, 4)
        month = _digits(s + 5, 2)
        day = _digits(s + 8, 2)
        hh = _digits(s + 11, 2)
        mm = _digits(s + 14, 2)
        ss = _digits(s + 17, 2)
        oh = _digits(s + 20, 2)
        om = _digits(s + 23, 2)
        if (year >= 1 and 1 <= month <= 12 and day >= 1 and 0 <= hh <= 23 and 0 <= mm <= 59
                and 0 <= ss <= 59 and 0 <= oh <= 23 and 0 <= om <= 59):
            mdays = 29 if (month == 2 and _leap(year)) else _MDAYS[month]
            if day <= mdays:
                secs = (_days_from_civil(year, month, day) * 86400
                        + hh * 3600 + mm * 60 + ss)
                if s[19] == 43:
                    secs -= oh * 3600 + om * 60
                else:
                    secs += oh * 3600 + om * 60
                return secs * 1000
    return _NO_TIME


cdef object _time_ms(object value):
    """tencent_time_ms with a C path for ``YYYY-MM-DDTHH:MM:SS±HH:MM``."""
    cdef long long ms
    if (type(value) is str and PyUnicode_IS_COMPACT_ASCII(value)
            and PyUnicode_GET_LENGTH(value) == 25):
        ms = _iso_ms(<const unsigned char*>PyUnicode_DATA(value))
        if ms != _NO_TIME:
            return ms
    return _fallback_time(value)


def tencent_time_ms(value):
    _check()
    return _time_ms(value)


cdef object _device_ts(dict body, object fallback):
    raw = body.get("timestamp")
    cdef long long r, ms, fb, diff
    if type(raw) is int and type(fallback) is int:
        try:
            r = raw
            fb = fallback
        except OverflowError:
            pass
        else:
            if r <= 0:
                return fallback
            if r > _TS_BOUND or not (-_TS_BOUND < fb < _TS_BOUND):
                return _device_ts_py(body, fallback)
            ms = r * 1000 if r < _MS_FROM else r
            diff = ms - fb
            if -_DAY_MS <= diff <= _DAY_MS:
                return ms
            return fallback
    return _device_ts_py(body, fallback)


def device_ts(body, fallback):
    _check()
    if type(body) is dict:
        return _device_ts(<dict>body, fallback)
    return _device_ts_py(body, fallback)


cdef object _from_body(dict bd, object device, object seq, object ts):
    """The pure rule's tail: the decoded device message → ``(device, props, ts_ms, seq)`` or None."""
    method = bd.get("method")
    if method == "report":
        props = bd.get("params")
        if type(props) is dict:
            inner = (<dict>props).get("params")
            if (<dict>props).get("method") == "report" and type(inner) is dict:
                bd = <dict>props
                props = inner
    elif method == "get_status_reply":
        data = bd.get("data")
        props = (<dict>data).get("reported") if type(data) is dict else None
    elif method is None and bd.get("type") == "update":
        state = bd.get("state")
        props = (<dict>state).get("reported") if type(state) is dict else None
    else:
        return None
    if type(props) is not dict:
        return None
    return (device, props, _device_ts(bd, ts), seq)


# -- The frame scanner.
#
# A strict reader of the one shape a property report has, over the frame's bytes:
# ``{"push": …, "action": …, "params": {"Type": …, "SubType": …, "DeviceId": …, "Payload": …,
# "Seq": …, "Time": …, …}}`` in any key order, with JSON whitespace anywhere JSON allows it. It
# records where the needed values are instead of building the frame's two dicts and ten strings.
# It accepts a *subset* of JSON: strings of printable ASCII without escapes, integers of at most
# 18 digits (orjson gives an int for those, always), ``true``/``false``/``null``, and one nested
# object (``params``). Anything else — an escape, a non-ASCII byte, a float, a nested value other
# than ``params``, a needed key given twice, trailing bytes, a truncated frame — makes it decline,
# and the owner's pure ``tencent_report`` answers, so every answer is the rule's.

cdef enum:
    V_NONE = 0   # key absent
    V_STR = 1
    V_INT = 2
    V_TRUE = 3
    V_FALSE = 4
    V_NULL = 5
    V_OBJ = 6    # only ``params``, whose members are scanned into their own slots

cdef enum:
    # top-level slots
    T_PUSH = 0
    T_ACTION = 1
    T_PARAMS = 2
    # params slots
    P_TYPE = 0
    P_SUBTYPE = 1
    P_DEVICE = 2
    P_PAYLOAD = 3
    P_SEQ = 4
    P_TIME = 5


cdef struct _Val:
    int kind
    Py_ssize_t a    # V_STR: content [a, b) of the frame, quotes excluded
    Py_ssize_t b
    long long num   # V_INT


cdef inline Py_ssize_t _skip_ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    # JSON whitespace is exactly these four (orjson rejects \f and \v).
    while i < n and (s[i] == 32 or s[i] == 10 or s[i] == 13 or s[i] == 9):
        i += 1
    return i


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #endif
    /* The index of the first byte at or after i that is not a plain string byte (a quote, a
       backslash, a control character or a non-ASCII byte), or n. 16 bytes a step with SSE2 (a
       signed compare below 0x20 catches both control characters and bytes >= 0x80); else 8 a
       step with the SWAR "has zero byte" / "has byte less than" tests, exact for presence; the
       byte loop then finds the position. */
    static inline Py_ssize_t c2m_plain_run(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) {
    #if defined(__SSE2__) || defined(_M_X64)
        const __m128i quote = _mm_set1_epi8(0x22), bslash = _mm_set1_epi8(0x5C);
        const __m128i space = _mm_set1_epi8(0x20);
        while (n - i >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i*)(s + i));
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                       _mm_cmplt_epi8(v, space));
            int mask = _mm_movemask_epi8(hit);
            if (mask) {
    #if defined(__GNUC__) || defined(__clang__)
                return i + __builtin_ctz((unsigned)mask);
    #else
                break;
    #endif
            }
            i += 16;
        }
    #else
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        while (n - i >= 8) {
            uint64_t w, q, b;
            memcpy(&w, s + i, 8);
            q = w ^ (ones * 0x22);
            b = w ^ (ones * 0x5C);
            if ((((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w) | w) & highs)
                break;
            i += 8;
        }
    #endif
        while (i < n) {
            unsigned char c = s[i];
            if (c == 0x22 || c == 0x5C || c < 0x20 || c >= 0x80)
                return i;
            i++;
        }
        return n;
    }
    """
    Py_ssize_t c2m_plain_run(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept


cdef inline Py_ssize_t _str_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Index of the closing quote of the string whose content starts at i, or -1 (declined:
    an escape, a control character, a non-ASCII byte, or no closing quote)."""
    i = c2m_plain_run(s, i, n)
    if i < n and s[i] == 34:
        return i
    return -1


cdef inline bint _lit(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, const char* word,
                      Py_ssize_t size) noexcept:
    return n - i >= size and memcmp(s + i, word, size) == 0


cdef Py_ssize_t _scalar(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, _Val* v) noexcept:
    """The scalar value at i into v; the index after it, or -1 (declined)."""
    cdef unsigned char c = s[i]
    cdef Py_ssize_t e, start
    cdef bint neg
    cdef long long num
    if c == 34:  # '"'
        e = _str_end(s, i + 1, n)
        if e < 0:
            return -1
        v.kind = V_STR
        v.a = i + 1
        v.b = e
        return e + 1
    if c == 45 or 48 <= c <= 57:  # '-' or a digit: an integer of 1..18 digits, JSON's grammar
        neg = c == 45
        if neg:
            i += 1
        start = i
        num = 0
        while i < n and 48 <= s[i] <= 57:
            if i - start == 18:  # a 19th digit: may not fit, and orjson may give a float
                return -1
            num = num * 10 + (s[i] - 48)
            i += 1
        if i == start or (s[start] == 48 and i - start > 1):  # no digit, or a leading zero
            return -1
        if i < n and (s[i] == 46 or s[i] == 101 or s[i] == 69):  # '.', 'e', 'E': a float
            return -1
        v.kind = V_INT
        v.num = -num if neg else num
        return i
    if c == 116 and _lit(s, i, n, b"true", 4):
        v.kind = V_TRUE
        return i + 4
    if c == 102 and _lit(s, i, n, b"false", 5):
        v.kind = V_FALSE
        return i + 5
    if c == 110 and _lit(s, i, n, b"null", 4):
        v.kind = V_NULL
        return i + 4
    return -1


cdef inline bint _key_is(const unsigned char* s, Py_ssize_t a, Py_ssize_t b, const char* word,
                         Py_ssize_t size) noexcept:
    return b - a == size and memcmp(s + a, word, size) == 0


cdef int _top_slot(const unsigned char* s, Py_ssize_t a, Py_ssize_t b) noexcept:
    if _key_is(s, a, b, b"push", 4):
        return T_PUSH
    if _key_is(s, a, b, b"action", 6):
        return T_ACTION
    if _key_is(s, a, b, b"params", 6):
        return T_PARAMS
    return -1


# The keys of a DeviceChange push's ``Params`` (seed 002), in P_* slot order.
cdef const char* _PARAM_KEYS[6]
_PARAM_KEYS[:] = [b"Type", b"SubType", b"DeviceId", b"Payload", b"Seq", b"Time"]
cdef Py_ssize_t _PARAM_LENS[6]
for _i in range(6):
    _PARAM_LENS[_i] = strlen(_PARAM_KEYS[_i])


cdef int _params_slot(const unsigned char* s, Py_ssize_t a, Py_ssize_t b) noexcept:
    cdef int slot
    for slot in range(6):
        if _key_is(s, a, b, _PARAM_KEYS[slot], _PARAM_LENS[slot]):
            return slot
    return -1


cdef Py_ssize_t _scan_object(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                             _Val* top, _Val* params) noexcept:
    """The object whose '{' is at i: the top level when ``top`` is not NULL (its ``params``
    object is scanned into ``params``), else ``params`` itself. The index after its '}', or -1."""
    cdef Py_ssize_t e, a
    cdef int slot
    cdef _Val scratch
    cdef _Val* v
    i = _skip_ws(s, i + 1, n)
    if i < n and s[i] == 125:  # '}'
        return i + 1
    while True:
        if i >= n or s[i] != 34:
            return -1
        a = i + 1
        e = _str_end(s, a, n)
        if e < 0:
            return -1
        slot = _top_slot(s, a, e) if top != NULL else _params_slot(s, a, e)
        i = _skip_ws(s, e + 1, n)
        if i >= n or s[i] != 58:  # ':'
            return -1
        i = _skip_ws(s, i + 1, n)
        if i >= n:
            return -1
        if slot < 0:
            v = &scratch
        else:
            v = (top + slot) if top != NULL else (params + slot)
            if v.kind != V_NONE:  # a needed key twice: orjson keeps the last; let it
                return -1
        if top != NULL and slot == T_PARAMS and s[i] == 123:  # '{'
            i = _scan_object(s, i, n, NULL, params)
            if i < 0:
                return -1
            v.kind = V_OBJ
        else:
            i = _scalar(s, i, n, v)
            if i < 0:
                return -1
        i = _skip_ws(s, i, n)
        if i >= n:
            return -1
        if s[i] == 44:  # ','
            i = _skip_ws(s, i + 1, n)
        elif s[i] == 125:  # '}'
            return i + 1
        else:
            return -1


cdef inline bint _str_is(const unsigned char* s, _Val* v, const char* word, Py_ssize_t size) noexcept:
    return v.kind == V_STR and v.b - v.a == size and memcmp(s + v.a, word, size) == 0


cdef bint _str_in(const unsigned char* s, _Val* v, tuple words) except -1:
    cdef bytes w
    for w in words:
        if _str_is(s, v, PyBytes_AS_STRING(w), PyBytes_GET_SIZE(w)):
            return True
    return False


cdef object _value_obj(const unsigned char* s, _Val* v):
    """The Python value orjson would give for a scanned scalar (``None`` when absent)."""
    if v.kind == V_STR:
        return PyUnicode_DecodeASCII(<const char*>(s + v.a), v.b - v.a, NULL)
    if v.kind == V_INT:
        return PyLong_FromLongLong(v.num)
    if v.kind == V_TRUE:
        return True
    if v.kind == V_FALSE:
        return False
    return None


cdef object _report_scanned(const unsigned char* s, Py_ssize_t n, object frame, object now_ms):
    cdef _Val top[3]
    cdef _Val params[6]
    cdef _Val* v
    cdef Py_ssize_t i
    cdef long long ms
    memset(top, 0, sizeof(top))
    memset(params, 0, sizeof(params))
    i = _skip_ws(s, 0, n)
    if i >= n or s[i] != 123:
        return _report_general(frame, now_ms)
    i = _scan_object(s, i, n, top, params)
    if i < 0 or _skip_ws(s, i, n) != n:
        return _report_general(frame, now_ms)
    # The frame is valid JSON and every needed value is known: the rule's checks, in C.
    v = &top[T_PUSH]
    if not ((v.kind == V_TRUE) or (v.kind == V_INT and v.num != 0) or (v.kind == V_STR and v.b > v.a)):
        return None
    if not _str_is(s, &top[T_ACTION], b"DeviceChange", 12) or top[T_PARAMS].kind != V_OBJ:
        return None
    v = &params[P_TYPE]
    if v.kind != V_STR or _str_in(s, v, _NOT_REPORT):
        return None
    if not _str_in(s, &params[P_SUBTYPE], _SUBTYPES):
        return None
    v = &params[P_DEVICE]
    if v.kind != V_STR or memchr(s + v.a, 47, v.b - v.a) == NULL:  # '/'
        return None
    v = &params[P_PAYLOAD]
    if v.kind != V_STR or v.b == v.a:
        return None
    try:
        body = _loads(_b64_decode(s + v.a, v.b - v.a))
    except (PayloadError, _JSONDecodeError):
        return None
    if type(body) is not dict:
        return None
    device = _value_obj(s, &params[P_DEVICE])
    v = &params[P_SEQ]
    seq = PyLong_FromLongLong(v.num) if v.kind == V_INT else None
    v = &params[P_TIME]
    ts = None
    if v.kind == V_STR and v.b - v.a == 25:
        ms = _iso_ms(s + v.a)
        if ms != _NO_TIME:
            ts = ms
    if ts is None:
        ts = _time_ms(_value_obj(s, v))
    ts = ts or now_ms
    return _from_body(<dict>body, device, seq, ts)


def _scanner_accepts(frame):
    """Test hook: whether the scanner reads ``frame`` itself (True) or declines it to orjson."""
    cdef _Val top[3]
    cdef _Val params[6]
    cdef const unsigned char* s
    cdef Py_ssize_t n, i
    if type(frame) is bytes:
        s = <const unsigned char*>PyBytes_AS_STRING(frame)
        n = PyBytes_GET_SIZE(frame)
    elif type(frame) is str and PyUnicode_IS_COMPACT_ASCII(frame):
        s = <const unsigned char*>PyUnicode_DATA(frame)
        n = PyUnicode_GET_LENGTH(frame)
    else:
        return False
    memset(top, 0, sizeof(top))
    memset(params, 0, sizeof(params))
    i = _skip_ws(s, 0, n)
    if i >= n or s[i] != 123:
        return False
    i = _scan_object(s, i, n, top, params)
    return i >= 0 and _skip_ws(s, i, n) == n


def tencent_report(frame, now_ms):
    _check()
    if type(frame) is bytes:
        return _report_scanned(<const unsigned char*>PyBytes_AS_STRING(frame),
                               PyBytes_GET_SIZE(frame), frame, now_ms)
    if type(frame) is str and PyUnicode_IS_COMPACT_ASCII(frame):
        return _report_scanned(<const unsigned char*>PyUnicode_DATA(frame),
                               PyUnicode_GET_LENGTH(frame), frame, now_ms)
    return _report_general(frame, now_ms)
