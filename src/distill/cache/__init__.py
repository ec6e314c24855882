"""Teacher caches: teacher outputs computed once, stored in checksummed memory-mapped shards, served by index."""

from distill.cache.store import CacheError, TensorSpec, TensorStore, TensorStoreWriter
from distill.cache.teacher import (
    CacheSettings,
    TeacherCache,
    build_teacher_cache,
    cache_fingerprint,
    cache_info,
    data_fingerprint,
    ensure_teacher_cache,
    teacher_fingerprint,
)

__all__ = [
    "CacheError",
    "CacheSettings",
    "TeacherCache",
    "TensorSpec",
    "TensorStore",
    "TensorStoreWriter",
    "build_teacher_cache",
    "cache_fingerprint",
    "cache_info",
    "data_fingerprint",
    "ensure_teacher_cache",
    "teacher_fingerprint",
]
