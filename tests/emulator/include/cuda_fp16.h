// Stands in for the CUDA header when the emulator compiles kernels/*.cu with g++.
#pragma once
#include "../cuda_shim.h"
