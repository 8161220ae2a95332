#pragma once

// The data loader as an actor: hands out each step's micro-batches, cut from the token stream
// (packed documents of the corpus with Fill-in-the-Middle, token_stream.hpp). It is light and
// runs on the actor runtime's shared threads.
//
// Messages: batch_request -> data_batch (data_messages.hpp).

#include <cstdint>
#include <memory>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/data/byte_tokenizer.hpp"
#include "runtime/data/text_corpus.hpp"
#include "runtime/data/token_stream.hpp"

namespace troupe {

struct data_actor_setup {
  std::unique_ptr<text_corpus> corpus;
  std::unique_ptr<byte_tokenizer> tokenizer;
  std::unique_ptr<token_stream> stream;
  std::int64_t micro_batch_size = 1;
  std::int64_t sequence_length = 2;
};

actor_ref spawn_data_actor(actor_runtime& runtime, std::shared_ptr<data_actor_setup> setup);

}  // namespace troupe
