// The ceiling for the benchmark: a receiver that only drains its UDP
// socket with recvmmsg and counts.  On SIGTERM it prints the count.
// Given a FILE, it also appends each batch there with one writev: the
// plainest possible logger, for reference.
//
//   nullrecv PORT [RBUF [FILE]]
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int) { stop = 1; }

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: nullrecv PORT [RBUF [FILE]]\n");
    return 2;
  }
  int fd = socket(AF_INET6, SOCK_DGRAM, 0);
  int off = 0, rbuf = argc > 2 ? atoi(argv[2]) : 8 << 20;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rbuf, sizeof rbuf) < 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rbuf, sizeof rbuf);
  sockaddr_in6 a = {};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(uint16_t(atoi(argv[1])));
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    perror("nullrecv: bind");
    return 1;
  }
  struct sigaction sa = {};
  sa.sa_handler = on_term;  // no SA_RESTART: recvmmsg returns EINTR
  sigaction(SIGTERM, &sa, nullptr);
  static char bufs[64][2048];
  mmsghdr msgs[64];
  iovec iov[64];
  for (int i = 0; i < 64; i++) {
    iov[i] = {bufs[i], sizeof bufs[i]};
    msgs[i] = mmsghdr{};
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int out = argc > 3 ? open(argv[3], O_WRONLY | O_CREAT | O_APPEND, 0600) : -1;
  iovec wiov[64];
  printf("nullrecv: listening\n");
  fflush(stdout);
  unsigned long long total = 0;
  while (!stop) {
    int n = recvmmsg(fd, msgs, 64, MSG_WAITFORONE, nullptr);
    if (n <= 0) continue;
    total += unsigned(n);
    if (out < 0) continue;
    for (int i = 0; i < n; i++) wiov[i] = {bufs[i], msgs[i].msg_len};
    if (writev(out, wiov, n) < 0) perror("nullrecv: writev");
  }
  printf("nullrecv: received %llu datagrams\n", total);
  return 0;
}
