// Clang thread-safety annotations (-Wthread-safety), as in leveldb's
// port/thread_annotations.h and abseil's base/thread_annotations.h. Under
// other compilers they expand to nothing. Annotate with the Mutex of
// util/mutex.h: libstdc++'s std::mutex carries no capability attributes, so
// clang cannot check code that locks it directly.
#pragma once

#if defined(__clang__)
#define EMBSTORE_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define EMBSTORE_THREAD_ANNOTATION(x)
#endif

// Other libraries (absl, under gRPC's headers) define some of these names
// too, with the same meaning: ours replace theirs, in any include order.
#undef CAPABILITY
#undef SCOPED_CAPABILITY
#undef GUARDED_BY
#undef PT_GUARDED_BY
#undef ACQUIRED_AFTER
#undef ACQUIRED_BEFORE
#undef EXCLUSIVE_LOCKS_REQUIRED
#undef LOCKS_EXCLUDED
#undef EXCLUSIVE_LOCK_FUNCTION
#undef UNLOCK_FUNCTION
#undef EXCLUSIVE_TRYLOCK_FUNCTION
#undef ASSERT_EXCLUSIVE_LOCK
#undef RETURN_CAPABILITY
#undef NO_THREAD_SAFETY_ANALYSIS
// A type that is a lock (a "capability").
#define CAPABILITY(x) EMBSTORE_THREAD_ANNOTATION(capability(x))
// An RAII type that holds a capability for its lifetime.
#define SCOPED_CAPABILITY EMBSTORE_THREAD_ANNOTATION(scoped_lockable)
// The member may be read or written only with the named mutex held.
#define GUARDED_BY(x) EMBSTORE_THREAD_ANNOTATION(guarded_by(x))
// The pointee may be accessed only with the named mutex held.
#define PT_GUARDED_BY(x) EMBSTORE_THREAD_ANNOTATION(pt_guarded_by(x))
// The mutex must be acquired after (before) the listed ones.
#define ACQUIRED_AFTER(...) EMBSTORE_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define ACQUIRED_BEFORE(...) EMBSTORE_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
// The caller must hold (must not hold) the listed mutexes.
#define EXCLUSIVE_LOCKS_REQUIRED(...) \
  EMBSTORE_THREAD_ANNOTATION(exclusive_locks_required(__VA_ARGS__))
#define LOCKS_EXCLUDED(...) EMBSTORE_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
// The function acquires / releases / tries to acquire the capability.
#define EXCLUSIVE_LOCK_FUNCTION(...) \
  EMBSTORE_THREAD_ANNOTATION(exclusive_lock_function(__VA_ARGS__))
#define UNLOCK_FUNCTION(...) EMBSTORE_THREAD_ANNOTATION(unlock_function(__VA_ARGS__))
#define EXCLUSIVE_TRYLOCK_FUNCTION(...) \
  EMBSTORE_THREAD_ANNOTATION(exclusive_trylock_function(__VA_ARGS__))
#define ASSERT_EXCLUSIVE_LOCK(...) EMBSTORE_THREAD_ANNOTATION(assert_exclusive_lock(__VA_ARGS__))
#define RETURN_CAPABILITY(x) EMBSTORE_THREAD_ANNOTATION(lock_returned(x))
// Opt a function out of the analysis; say why beside it.
#define NO_THREAD_SAFETY_ANALYSIS EMBSTORE_THREAD_ANNOTATION(no_thread_safety_analysis)
