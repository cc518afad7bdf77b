// Compiled as part of meshrt::kernels' dependants' view (tests/CMakeLists.txt,
// test module_arrows): kernels may use device only, so comm's headers must not
// be on its include path and this file must fail to compile.
#include "comm/world.h"
#include "kernels/elementwise.h"
