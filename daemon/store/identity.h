// The IDENTITY file moved to daemon/sync/identity.h, beside the membership that owns it.
// This forwarding header only keeps daemon/node.h and tests/sim/simulator.cc building until
// their includes say daemon/sync/identity.h; delete it then. Include daemon/sync/identity.h.
#pragma once

#include "daemon/sync/identity.h"  // IWYU pragma: export
