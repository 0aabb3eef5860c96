# Shared declarations only (cdef extern, inline, enum): mirrored from p2pfast/wire.py.
# tests/kernels/test_constants.py checks the compiled values against wire.py.

from libc.stdint cimport uint16_t, uint32_t

cdef extern from "p2p_hton.h" nogil:
    uint16_t p2p_load_be16(const unsigned char *p)
    uint32_t p2p_load_be32(const unsigned char *p)
    void p2p_store_be16(unsigned char *p, uint16_t v)
    void p2p_store_be32(unsigned char *p, uint32_t v)

cdef extern from "p2p_debug.h":
    const int P2P_DEBUG

cdef enum:
    WIRE_VERSION = 1
    WIRE_HEADER_SIZE = 12
    WIRE_MAX_PAYLOAD = 65535
    WIRE_FRAME_TYPE_MIN = 1
    WIRE_FRAME_TYPE_MAX = 7
    WIRE_KNOWN_FLAGS = 0x0003
