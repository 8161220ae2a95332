#pragma once

// The device-neutral ops and buffers of kernels/dispatch under the plugins' namespace: a layer
// plugin computes on whichever device its exec context names.

#include "kernels/dispatch/device_ops.hpp"

namespace troupe::plugin {

namespace ops = kernels::ops;
using kernels::attention_problem;
using kernels::buffer;
using kernels::device_array;
using kernels::on_gpu;
using kernels::rope_table;
using kernels::strided;
using kernels::strided_out;

}  // namespace troupe::plugin
