#pragma once

// CUDA streams and events behind troupe's own types. Each actor placed on a GPU owns one stream
// (its exec context's); side streams overlap copies or communication with it, and events order
// work across streams. Tensor allocations and copies made by a thread go to its current stream:
// the one a stream_guard set, else CUDA's per-thread default stream.

namespace troupe::cuda {

class event;

/// A CUDA stream on one device; work enqueued on it runs in order. Move-only.
///
/// NOTES: a stream's CUDA handle is never destroyed but handed to the next stream made on that
/// device with that priority. Tensors are freed on the stream they were allocated on, and a
/// tensor may outlive the actor (and stream) that made it: its stream-ordered free must then
/// still name a live stream. The handles a process ever holds are as many as its actors at once.
class stream {
 public:
  /// A non-blocking stream on cuda:`ordinal`. `priority` follows CUDA: lower is more urgent,
  /// 0 is the default, and values beyond the device's range are clamped to it.
  explicit stream(int ordinal, int priority = 0);
  ~stream();
  stream(stream&& other) noexcept;
  stream& operator=(stream&& other) noexcept;
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  int device() const { return ordinal_; }
  /// The cudaStream_t, for kernels/cuda and for the plugin ABI's exec context.
  void* native() const { return handle_; }

  /// Waits until everything enqueued so far has run; a failed kernel fails here.
  void synchronize() const;
  /// Work enqueued after this call waits for `done` (recorded on any stream of any device).
  void wait(const event& done) const;

 private:
  int ordinal_;
  int priority_;
  void* handle_;
};

/// A point in a stream's work. Move-only.
class event {
 public:
  /// An event on cuda:`ordinal`; `timing` enables elapsed_ms (it costs a little).
  explicit event(int ordinal, bool timing = false);
  ~event();
  event(event&& other) noexcept;
  event& operator=(event&& other) noexcept;
  event(const event&) = delete;
  event& operator=(const event&) = delete;

  /// Marks the current end of `on`'s work.
  void record(const stream& on);
  void record(void* native_stream);
  /// Work enqueued on `native_stream` (an exec context's) after this call waits for this event.
  void order_before(void* native_stream) const;
  /// Waits until the recorded work has run.
  void synchronize() const;
  /// True once the recorded work has run.
  bool done() const;
  void* native() const { return handle_; }

  /// Milliseconds between two recorded timing events (both must have run).
  static float elapsed_ms(const event& start, const event& end);

 private:
  int ordinal_;
  void* handle_;
};

/// The calling thread's current stream on cuda:`ordinal` (a native handle): the innermost
/// stream_guard's, else CUDA's per-thread default stream.
void* current_stream(int ordinal);

/// Makes `on` the calling thread's current stream for its device while the guard lives.
class stream_guard {
 public:
  explicit stream_guard(const stream& on);
  /// The same for a native stream handle of cuda:`ordinal` (an exec context's).
  stream_guard(int ordinal, void* native_stream);
  ~stream_guard();
  stream_guard(const stream_guard&) = delete;
  stream_guard& operator=(const stream_guard&) = delete;

 private:
  int ordinal_;
  void* previous_;
};

}  // namespace troupe::cuda
