#ifndef OCAPN_UDS_CPADDEDSENDER_H
#define OCAPN_UDS_CPADDEDSENDER_H

// Test-only: a sender that builds its SCM_RIGHTS control message the way Spritely Goblins'
// sendmsg code does (issue #17), so the tests can check we tolerate it. Not part of any product.

#include <stddef.h>
#include <sys/types.h>

/// One sendmsg(MSG_NOSIGNAL) of `bytes` whose control message is the C struct
/// { size_t cmsg_len; int cmsg_level; int cmsg_type; int fd; } with cmsg_len and msg_controllen
/// both sizeof(struct) = 24 on LP64, not CMSG_LEN(4) = 20. The kernel then reads the four padding
/// bytes as a second descriptor. Goblins leaves them zero (its fd 0, stdin); the test passes the
/// descriptor that stands for that stdin explicitly as `padding` and never touches its own fd 0.
/// Returns sendmsg's result (errno set on -1).
ssize_t cps_send_padded(int socket, const void *_Nonnull bytes, size_t length, int fd, int padding);

/// sizeof the struct above (24 on LP64): what the test asserts it sent.
size_t cps_padded_control_length(void);

#endif
