/* P2P_DEBUG guards extra consistency checks; setup.py defines it under P2PFAST_DEBUG=1. */
#ifndef P2P_DEBUG_H
#define P2P_DEBUG_H
#ifndef P2P_DEBUG
#define P2P_DEBUG 0
#endif
#endif
