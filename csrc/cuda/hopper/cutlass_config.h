// Settings for CUTLASS and CuTe, which must come before their first header:
// each translation unit that instantiates the Hopper kernels includes this
// first.
#pragma once

// CUTLASS's pipeline classes check thread roles with breakpoints unless
// NDEBUG is set; the roles here are fixed by construction.
#ifndef NDEBUG
#define NDEBUG
#endif

