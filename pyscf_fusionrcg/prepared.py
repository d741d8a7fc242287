"""On-disk cache of what the host prepares per class: programs, op-stream tables, kernel sources.

Why: before its first launch a class needs its program (graph, schedule,
spherical fusion: :func:`pyscf_fusionrcg.host.get_program`), for the op-stream
forms its table and its CUDA text (:mod:`pyscf_fusionrcg.kernels`, whose text
gpucore hashes to find the cached cubin).  All of it is pure Python, seconds
per large class in every new process even when every cubin is on disk; it
depends only on the class, Cartesian or spherical functions, the variant and
the generator, so it is kept beside the cubins and the tier decisions
(``gpucore.cache_dir()``) and a later process unpickles it instead.

This is a base module: it imports nothing of the generator and is handed
keys and builders.  Keys: a program by ``host._key`` (class, Cartesian, VRR
build centres); a table or source by its program's key and every field of
the variant.  The files live in a folder named by :func:`version`, a digest
of the generator sources (:data:`GENERATOR_SOURCES`, the CUDA headers, then
``host.py`` and this module), the Python and NumPy versions and
:data:`FORMAT`: any change of the generator or of the pickled classes misses
instead of loading stale objects.  Tables and sources are only cached for
programs that came through :func:`program` (whose key is known); others are
built every time.

Robustness: a file holds a magic line, its full key, the lengths of the
pickle and of its arrays' out-of-band buffers and a CRC-32 of all of it.  A
file that is short, has another key or checksum, or fails to unpickle or to
be of the expected type is rebuilt and rewritten (logged at debug level); a
missing or unwritable folder only costs the rebuild.  Writes go to a
temporary file of this process and thread, then ``os.replace``
(``gpucore.write_atomic``): readers see the old file, the new one, or none.  The
files are pickles, trusted as the cubins beside them are.
``$FUSIONRCG_PREPARED=0`` turns the cache off
(:func:`~pyscf_fusionrcg.options.prepared_cache_enabled`).

Every generator version has its own folder, so an upgrade or an edited
checkout starts a new one;
the first process of a version to use its folder marks it used and removes
the least recently used beyond :data:`KEEP_VERSIONS` (a process still on a
removed version only rebuilds and stores again).
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import os
import pickle
import shutil
import struct
import sys
import threading
import weakref
import zlib
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Layout of the files and of what they hold; bump to orphan old caches.
FORMAT = 2
_MAGIC = f'FRPREP{FORMAT}\n'.encode()
#: after the magic: key length, number of out-of-band buffers, flags (_ZLIB), CRC-32 of all that
#: follows the header
_HEAD = struct.Struct('<IIII')
#: the one part is a zlib-compressed pickle with its arrays in band
_ZLIB = 1
_LEN = struct.Struct('<Q')
_ALIGN = 64

#: Version folders kept (:func:`_use_folder`).
KEEP_VERSIONS = 3
#: key of each program that came through :func:`program` (identity-keyed: programs compare by identity)
_origins: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def enabled() -> bool:
    """Whether the cache is on (:func:`~pyscf_fusionrcg.options.prepared_cache_enabled`)."""
    from .options import prepared_cache_enabled
    return prepared_cache_enabled()


#: The sources whose text decides what the generator builds (besides ``host.py``
#: and this module, in :func:`version`): a routing decision or a prepared object
#: is only valid for them.  ``boys.py``: the Boys tables the generated code carries.
GENERATOR_SOURCES = ('ir.py', 'graph.py', 'schedule.py', 'spherical.py', 'codegen/*.py', 'pairmaps.py',
                     'tiers.py', 'boys.py')


@lru_cache(maxsize=1)
def generator_version() -> str:
    """Digest of the generator sources and of the CUDA headers the kernels
    include (``fusionrcg/*.cuh`` where gpucore finds the shipped sources)."""
    from gpucore import csrc_root
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for pattern in GENERATOR_SOURCES:
        for path in sorted(here.glob(pattern)):
            h.update(path.relative_to(here).as_posix().encode())
            h.update(path.read_bytes())
    for path in sorted((csrc_root() / 'fusionrcg').glob('*.cuh')):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def version() -> str:
    """Digest of everything the cached objects depend on besides their keys."""
    h = hashlib.sha256()
    h.update(generator_version().encode())
    here = Path(__file__).resolve().parent
    for name in ('host.py', 'prepared.py'):
        h.update((here / name).read_bytes())
    h.update(f'{FORMAT}|{sys.version_info[:2]}|{np.__version__}'.encode())
    return h.hexdigest()[:16]


def _folder() -> Path | None:
    try:
        from gpucore import cache_dir
        folder = cache_dir() / 'fusionrcg-prepared' / version()
    except Exception as exc:        # no cache dir and none can be made: build every time
        log.debug('prepared-object cache unavailable: %s', exc)
        return None
    _use_folder(folder)
    return folder


_used: set = set()


def _use_folder(folder: Path) -> None:
    """Once per process and folder: mark this version's folder used (its
    mtime, which reading alone would not change) and remove the least
    recently used sibling versions beyond KEEP_VERSIONS."""
    with _lock:
        if folder in _used:
            return
        _used.add(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.utime(folder)
        others = sorted((d for d in folder.parent.iterdir() if d.is_dir() and d != folder),
                        key=lambda d: d.stat().st_mtime, reverse=True)
    except OSError as exc:          # unwritable cache: nothing to mark or prune
        log.debug('cannot mark %s used: %s', folder, exc)
        return
    for old in others[KEEP_VERSIONS - 1:]:
        shutil.rmtree(old, ignore_errors=True)
        log.debug('removed the prepared objects of an old version: %s', old)


def _path(kind: str, key: str) -> Path | None:
    folder = _folder()
    if folder is None:
        return None
    return folder / f'{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pkl'


_gc_holds = 0
_gc_was_on = False


@contextmanager
def _gc_paused():
    """No cyclic GC while unpickling: a graph's many small objects set off
    collections over everything alive, which made loading the 120 graphs up
    to (gg|gg) take 0.6 s instead of 0.08 s.  Counted, so that threads
    loading at once restore it only when the last one is done."""
    global _gc_holds, _gc_was_on
    with _lock:
        if _gc_holds == 0:
            _gc_was_on = gc.isenabled()
            gc.disable()
        _gc_holds += 1
    try:
        yield
    finally:
        with _lock:
            _gc_holds -= 1
            if _gc_holds == 0 and _gc_was_on:
                gc.enable()


def _pad(n: int) -> int:
    return -n % _ALIGN


def _read(path: Path, key: str):
    """The object stored under ``key`` at ``path``; raises on any mismatch.

    The file is read once into a bytearray and the arrays are unpickled as
    (writable, aligned) views of it: copying them out again took half the
    time of a warm start."""
    with open(path, 'rb') as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        if f.readinto(data) != len(data):
            raise ValueError('short read')
    n = len(_MAGIC) + _HEAD.size
    if len(data) < n or data[:len(_MAGIC)] != _MAGIC:
        raise ValueError('not a prepared-object file')
    klen, nbuf, flags, crc = _HEAD.unpack_from(data, len(_MAGIC))
    view = memoryview(data)
    if zlib.crc32(view[n:]) != crc:
        raise ValueError('truncated or corrupt')
    if bytes(view[n:n + klen]) != key.encode():
        raise ValueError('another key')
    pos = n + klen
    lens = [_LEN.unpack_from(data, pos + _LEN.size * i)[0] for i in range(nbuf + 1)]
    pos += _LEN.size * (nbuf + 1)
    parts = []
    for ln in lens:
        pos += _pad(pos)
        parts.append(view[pos:pos + ln])
        pos += ln
    if pos != len(data):
        raise ValueError('wrong length')
    with _gc_paused():
        if flags & _ZLIB:
            return pickle.loads(zlib.decompress(parts[0]))
        return pickle.loads(parts[0], buffers=parts[1:])


def _write(path: Path, key: str, obj, compress: bool = False) -> None:
    """Store ``obj`` under ``key``: the pickle, then its arrays' buffers out of
    band; or, ``compress``-ed, one zlib stream of it all."""
    buffers = []
    try:
        if compress:
            parts = [memoryview(zlib.compress(pickle.dumps(obj, protocol=5), 1))]
        else:
            body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
            parts = [memoryview(body)] + [b.raw() for b in buffers]
    except Exception as exc:        # not picklable: nothing to keep
        log.debug('cannot pickle %s: %s', key, exc)
        return
    k = key.encode()
    tail = [k, b''.join(_LEN.pack(p.nbytes) for p in parts)]
    pos = len(_MAGIC) + _HEAD.size + sum(len(t) for t in tail)
    for p in parts:
        tail.append(bytes(_pad(pos)))
        tail.append(p)
        pos += _pad(pos) + p.nbytes
    crc = 0
    for t in tail:
        crc = zlib.crc32(t, crc)
    from gpucore import write_atomic
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, [_MAGIC + _HEAD.pack(len(k), len(parts) - 1, _ZLIB if compress else 0, crc), *tail])
    except OSError as exc:          # read-only or full cache: the object is still good
        log.debug('cannot store %s: %s', path, exc)


def cached(kind: str, key: str, build, check=None, compress=False):
    """``build()``'s object from the disk cache, else built and stored
    (``compress``-ed: see :func:`program`).

    ``check(obj)`` tells whether a loaded object is one ``build`` could have
    returned (its type, its class); anything else is rebuilt and rewritten.
    """
    if not enabled():
        return build()
    path = _path(kind, key)
    if path is None:
        return build()
    if path.is_file():
        try:
            obj = _read(path, key)
            if check is None or check(obj):
                return obj
            log.debug('%s holds an unexpected %s', path, type(obj).__name__)
        except Exception as exc:    # corrupt, truncated, from another version: rebuild
            log.debug('rebuilding %s (%s): %s', path, key, exc)
    obj = build()
    _write(path, key, obj, compress)
    return obj


def program(key: tuple, build):
    """The program of ``host._key`` ``key``: from disk, else ``build()``.

    Only the dataclass fields are stored (no cached properties such as
    ``prim_ops``), zlib-compressed: the op arrays are three quarters of the
    cache (192 of 260 MB up to (gg|gg)) and shrink about sixfold, for about
    a second more of a warm start.  The program's key is remembered so that
    its tables and sources can be cached too."""
    from . import ir
    skey = f'program|{key!r}'

    def make():
        p = build()
        return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}

    names = {f.name for f in dataclasses.fields(ir.Program)}

    def check(fields):
        return (isinstance(fields, dict) and set(fields) == names
                and isinstance(fields['prim'], ir.OpTable) and isinstance(fields['ctr'], ir.OpTable)
                and (fields['la'], fields['lb'], fields['lc'], fields['ld'], fields['cart']) == key[:5])

    prog = ir.Program(**cached('program', skey, make, check, compress=True))
    with _lock:
        _origins[prog] = key
    return prog


def for_variant(kind: str, program, variant, build, check=None):
    """``build()`` for ``(program, variant)``, cached when the program came
    through :func:`program` (kinds: 'table', 'source')."""
    with _lock:
        pkey = _origins.get(program)
    if pkey is None:
        return build()
    return cached(kind, f'{kind}|{pkey!r}|{dataclasses.astuple(variant)!r}', build, check)
