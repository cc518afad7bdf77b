// Moved: PollPause is device/poll.h (comm, sharding and serving poll with it,
// and so do the stream waits of device/). This forwarding header keeps the old
// path working for one release.
#pragma once

#include "device/poll.h"
