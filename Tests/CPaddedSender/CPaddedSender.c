#include "CPaddedSender.h"

#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct goblins_cmsg {
    size_t cmsg_len;
    int cmsg_level;
    int cmsg_type;
    int fd;
};

_Static_assert(sizeof(struct goblins_cmsg) == 24, "the padded struct of issue #17 is 24 bytes on LP64");
_Static_assert(sizeof(struct goblins_cmsg) > CMSG_LEN(sizeof(int)), "padding beyond CMSG_LEN(4)");

ssize_t cps_send_padded(int socket, const void *bytes, size_t length, int fd, int padding) {
    union {
        struct goblins_cmsg header;
        unsigned char raw[sizeof(struct goblins_cmsg)];
    } control;
    memset(&control, 0, sizeof control);  // a freshly made bytevector
    control.header.cmsg_len = sizeof(struct goblins_cmsg);
    control.header.cmsg_level = SOL_SOCKET;
    control.header.cmsg_type = SCM_RIGHTS;
    control.header.fd = fd;
    memcpy(control.raw + offsetof(struct goblins_cmsg, fd) + sizeof(int), &padding, sizeof(int));
    struct iovec iov = {.iov_base = (void *)bytes, .iov_len = length};
    struct msghdr message = {0};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control.raw;
    message.msg_controllen = sizeof(struct goblins_cmsg);
    return sendmsg(socket, &message, MSG_NOSIGNAL);
}

size_t cps_padded_control_length(void) { return sizeof(struct goblins_cmsg); }
