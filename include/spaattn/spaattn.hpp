// The whole public API of spaattn.
#pragma once
#include "spaattn/config.hpp"
#include "spaattn/cuda.hpp"
#include "spaattn/error.hpp"
#include "spaattn/layout.hpp"
#include "spaattn/method.hpp"
#include "spaattn/order.hpp"
#include "spaattn/stages.hpp"
#include "spaattn/tensor.hpp"
