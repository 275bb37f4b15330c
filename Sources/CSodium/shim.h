#ifndef OCAPN_UDS_CSODIUM_SHIM_H
#define OCAPN_UDS_CSODIUM_SHIM_H
#include <sodium.h>
#endif
