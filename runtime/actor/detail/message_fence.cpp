#include "runtime/actor/detail/message_fence.hpp"

#include <caf/abstract_actor.hpp>
#include <caf/actor_control_block.hpp>

#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* address);
extern "C" void __tsan_release(void* address);
#define TROUPE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
extern "C" void __tsan_acquire(void* address);
extern "C" void __tsan_release(void* address);
#define TROUPE_TSAN 1
#endif
#endif

namespace troupe {

namespace {

// The two TSan annotations every fence below comes down to; a null object is no hand-off.
void release(const void* object) {
#ifdef TROUPE_TSAN
  if (object != nullptr) __tsan_release(const_cast<void*>(object));
#else
  (void)object;
#endif
}

void acquire(const void* object) {
#ifdef TROUPE_TSAN
  if (object != nullptr) __tsan_acquire(const_cast<void*>(object));
#else
  (void)object;
#endif
}

}  // namespace

void publish_writes_to(const caf::actor_control_block* receiver) {
  release(receiver);
}

void publish_writes_to(const caf::strong_actor_ptr& receiver) {
  release(receiver.get());
}

void observe_writes(const caf::actor_control_block* self) {
  acquire(self);
}

void observe_writes(const caf::abstract_actor* self) {
  acquire(self != nullptr ? caf::actor_control_block::from(self) : nullptr);
}

void publish_exit(const caf::actor_system* system) {
  release(system);
}

void observe_exits(const caf::actor_system* system) {
  acquire(system);
}

}  // namespace troupe
