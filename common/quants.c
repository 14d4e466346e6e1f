/* quants.c - placeholder; the kernels land here. */
#include "quants.h"
