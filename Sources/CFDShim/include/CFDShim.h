#ifndef OCAPN_UDS_CFDSHIM_H
#define OCAPN_UDS_CFDSHIM_H

// Thin C wrappers for what Swift's Glibc module does not import (K18): the CMSG_* macros and
// struct ucred. One prefixed function per macro, no logic. Only the Transport module imports
// this header, and it never lets these types reach a public Swift signature.

#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
// epoll, eventfd and timerfd for Transport's EventLoop (Swift's Glibc module does not import them).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

/// CMSG_FIRSTHDR(msg).
struct cmsghdr *_Nullable cfd_cmsg_firsthdr(const struct msghdr *_Nonnull msg);
/// CMSG_NXTHDR(msg, cmsg).
struct cmsghdr *_Nullable cfd_cmsg_nxthdr(struct msghdr *_Nonnull msg, struct cmsghdr *_Nonnull cmsg);
/// CMSG_DATA(cmsg).
unsigned char *_Nonnull cfd_cmsg_data(struct cmsghdr *_Nonnull cmsg);
/// CMSG_SPACE(length).
size_t cfd_cmsg_space(size_t length);
/// CMSG_LEN(length).
size_t cfd_cmsg_len(size_t length);
/// Alignment the control buffer must have (that of struct cmsghdr).
size_t cfd_cmsghdr_alignment(void);

/// getsockopt(fd, SOL_SOCKET, SO_PEERCRED) unpacked from struct ucred.
/// Returns getsockopt's result (0 or -1 with errno set); also -1/EINVAL on a short answer.
int cfd_get_peer_credentials(int fd, pid_t *_Nonnull pid, uid_t *_Nonnull uid, gid_t *_Nonnull gid);

/// accept4(fd, NULL, NULL, flags): declared only under _GNU_SOURCE, so Glibc does not import it.
int cfd_accept4(int fd, int flags);

/// sendmmsg(fd, {first, second}, 2, flags): declared only under _GNU_SOURCE, so Glibc does not
/// import it. Stores each message's byte count in lengths[0] and lengths[1] (0 for one the kernel
/// did not reach); returns sendmmsg's result (messages sent, or -1 with errno set).
int cfd_sendmmsg_pair(int fd, const struct msghdr *_Nonnull first, const struct msghdr *_Nonnull second,
                      unsigned int *_Nonnull lengths, int flags);

/// pipe2(fds, O_CLOEXEC): declared only under _GNU_SOURCE, so Glibc does not import it.
int cfd_pipe_cloexec(int *_Nonnull fds);

/// bind(fd, {AF_UNIX}, sizeof(sa_family_t)): Linux autobind, a kernel-chosen abstract name.
int cfd_unix_autobind(int fd);

/// sizeof(struct sockaddr_un) and offsetof(struct sockaddr_un, sun_path).
size_t cfd_sockaddr_un_size(void);
size_t cfd_sockaddr_un_path_offset(void);

/// ioctl(fd, SIOCOUTQ, &bytes): what this socket sent that its peer has not consumed yet
/// (for AF_UNIX, queued skb memory; 0 means the peer took everything). ioctl is variadic, so
/// Swift cannot call it. Returns ioctl's result (0 or -1 with errno set).
int cfd_socket_unread_output(int fd, int *_Nonnull bytes);
/// prctl(PR_SET_DUMPABLE, dumpable): prctl is variadic, which Swift cannot call.
int cfd_set_dumpable(int dumpable);
/// prctl(PR_GET_DUMPABLE): 0 (not dumpable), 1 or 2, or -1 with errno set.
int cfd_get_dumpable(void);

/// pthread_setname_np(pthread_self(), name): declared only under _GNU_SOURCE. Names longer
/// than 15 bytes are refused by the kernel (ERANGE); returns its result.
int cfd_set_thread_name(const char *_Nonnull name);

#endif
