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

void publish_writes_to(const caf::actor_control_block* receiver) {
#ifdef TROUPE_TSAN
  if (receiver != nullptr) __tsan_release(const_cast<caf::actor_control_block*>(receiver));
#else
  (void)receiver;
#endif
}

void publish_writes_to(const caf::strong_actor_ptr& receiver) {
  publish_writes_to(receiver.get());
}

void observe_writes(const caf::actor_control_block* self) {
#ifdef TROUPE_TSAN
  if (self != nullptr) __tsan_acquire(const_cast<caf::actor_control_block*>(self));
#else
  (void)self;
#endif
}

void publish_exit(const caf::actor_system* system) {
#ifdef TROUPE_TSAN
  if (system != nullptr) __tsan_release(const_cast<caf::actor_system*>(system));
#else
  (void)system;
#endif
}

void observe_exits(const caf::actor_system* system) {
#ifdef TROUPE_TSAN
  if (system != nullptr) __tsan_acquire(const_cast<caf::actor_system*>(system));
#else
  (void)system;
#endif
}

void observe_writes(const caf::abstract_actor* self) {
  observe_writes(self != nullptr ? caf::actor_control_block::from(self) : nullptr);
}

}  // namespace troupe
