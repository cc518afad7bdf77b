// The UnaryOp and BinaryOp enums, generated from the elementwise op table
// (kernels/elementwise_ops.h, where the rows are).
#pragma once

#include "kernels/elementwise_ops.h"
