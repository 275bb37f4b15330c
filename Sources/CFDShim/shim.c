// _GNU_SOURCE: struct ucred is only declared with it.
#define _GNU_SOURCE 1
#include "CFDShim.h"

#include <assert.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdalign.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/un.h>
#include <linux/sockios.h>

// The Swift side sizes buffers with these helpers; the asserts catch an ABI we never checked.
_Static_assert(sizeof(int) == 4, "fds in SCM_RIGHTS are 4-byte ints");
_Static_assert(sizeof(struct ucred) == 12, "struct ucred is pid, uid, gid");
_Static_assert(sizeof(pid_t) == 4 && sizeof(uid_t) == 4 && sizeof(gid_t) == 4, "32-bit ids");
_Static_assert(CMSG_LEN(0) == sizeof(struct cmsghdr), "CMSG_LEN(0) is the header");
_Static_assert(CMSG_SPACE(sizeof(int)) >= CMSG_LEN(sizeof(int)), "CMSG_SPACE covers CMSG_LEN");
_Static_assert(sizeof(((struct sockaddr_un *)0)->sun_path) == 108, "Linux sun_path is 108 bytes");

struct cmsghdr *cfd_cmsg_firsthdr(const struct msghdr *msg) {
    assert(msg != NULL);
    return CMSG_FIRSTHDR(msg);
}

struct cmsghdr *cfd_cmsg_nxthdr(struct msghdr *msg, struct cmsghdr *cmsg) {
    assert(msg != NULL && cmsg != NULL);
    return CMSG_NXTHDR(msg, cmsg);
}

unsigned char *cfd_cmsg_data(struct cmsghdr *cmsg) {
    assert(cmsg != NULL);
    return CMSG_DATA(cmsg);
}

size_t cfd_cmsg_space(size_t length) { return CMSG_SPACE(length); }

size_t cfd_cmsg_len(size_t length) { return CMSG_LEN(length); }

size_t cfd_cmsghdr_alignment(void) { return alignof(struct cmsghdr); }

int cfd_get_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    assert(pid != NULL && uid != NULL && gid != NULL);
    struct ucred cred;
    socklen_t len = sizeof(cred);
    int rc = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
    if (rc != 0) return rc;
    if (len != sizeof(cred)) { errno = EINVAL; return -1; }
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int cfd_accept4(int fd, int flags) { return accept4(fd, NULL, NULL, flags); }

int cfd_sendmmsg_pair(int fd, const struct msghdr *first, const struct msghdr *second, unsigned int *lengths,
                      int flags) {
    assert(first != NULL && second != NULL && lengths != NULL);
    struct mmsghdr messages[2] = {{.msg_hdr = *first, .msg_len = 0}, {.msg_hdr = *second, .msg_len = 0}};
    int rc = sendmmsg(fd, messages, 2, (unsigned int)flags);
    lengths[0] = messages[0].msg_len;
    lengths[1] = messages[1].msg_len;
    return rc;
}

int cfd_pipe_cloexec(int *fds) {
    assert(fds != NULL);
    return pipe2(fds, O_CLOEXEC);
}

int cfd_unix_autobind(int fd) {
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    return bind(fd, (const struct sockaddr *)&address, sizeof(sa_family_t));
}

size_t cfd_sockaddr_un_size(void) { return sizeof(struct sockaddr_un); }

size_t cfd_sockaddr_un_path_offset(void) { return offsetof(struct sockaddr_un, sun_path); }

int cfd_socket_unread_output(int fd, int *bytes) {
    assert(bytes != NULL);
    return ioctl(fd, SIOCOUTQ, bytes);
}

int cfd_set_dumpable(int dumpable) { return prctl(PR_SET_DUMPABLE, (unsigned long)dumpable, 0UL, 0UL, 0UL); }

int cfd_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0UL, 0UL, 0UL, 0UL); }

int cfd_set_thread_name(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}
