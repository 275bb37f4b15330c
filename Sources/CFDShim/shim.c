#include "CFDShim.h"
