// The floors of the benchmark: receivers that do the least a UDP logger
// can do, so that udplogger's cost is compared with like.
//
//   nullrecv port=P [rbuf=N] [mode=null|plain|pause|writer|format] [from=0] [file=F]
//
// mode=null    wakes for every datagram (recvmmsg, MSG_WAITFORONE) and
//              discards: the classic ceiling, context only
// mode=plain   the same, plus one O_APPEND writev of the raw payloads per
//              wakeup to file=F
// mode=pause   batches the way udplogger does (epoll, recvmmsg until the
//              socket is empty, udplogger's own Pacer between looks) and
//              discards
// mode=writer  as pause, with each sender's address and kernel arrival
//              stamp (SO_TIMESTAMPNS), and one O_APPEND writev of the raw
//              payloads per recvmmsg batch to file=F: the least a UDP
//              logger that says when and from whom can spend; with from=0
//              without the addresses (the floor as first defined)
// mode=format  as writer, each payload behind a fixed prefix as long as
//              udplogger's ("2026-11-30 23:59:59 127.0.0.1:12345 "),
//              copied into one buffer written once per batch: what the
//              line format costs the kernel, without udplogger's work
//
// On SIGTERM it prints "nullrecv: received N datagrams".
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <string>

#include "udplogger.h"

namespace {

volatile sig_atomic_t stop;
void on_term(int) { stop = 1; }

constexpr int kBatch = 64;  // as udplogger
char bufs[kBatch][2048];
alignas(cmsghdr) char ctrl[kBatch][64];
sockaddr_in6 names[kBatch];
mmsghdr msgs[kBatch];
iovec iov[kBatch], wiov[kBatch];
const char kPrefix[] = "2026-11-30 23:59:59 127.0.0.1:12345 ";
constexpr size_t kPrefixLen = sizeof kPrefix - 1;
char lines[kBatch * (kPrefixLen + sizeof bufs[0])];

int64_t monotonic_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// One recvmmsg into the buffers (stamps: with room for the arrival time;
// from: for the sender's address), then the payloads to out if it is open,
// behind kPrefix when prefixed; returns the datagrams read.
int batch(int fd, int out, bool stamps, bool from, bool prefixed, int flags) {
  for (int i = 0; i < kBatch; i++) {
    msgs[i].msg_hdr.msg_control = stamps ? ctrl[i] : nullptr;
    msgs[i].msg_hdr.msg_controllen = stamps ? sizeof ctrl[i] : 0;
    msgs[i].msg_hdr.msg_name = from ? &names[i] : nullptr;
    msgs[i].msg_hdr.msg_namelen = from ? sizeof names[i] : 0;
  }
  int n = recvmmsg(fd, msgs, kBatch, flags, nullptr);
  if (n <= 0 || out < 0) return n < 0 ? 0 : n;
  int iovcnt = n;
  if (prefixed) {
    size_t used = 0;
    for (int i = 0; i < n; i++) {
      memcpy(lines + used, kPrefix, kPrefixLen);
      memcpy(lines + used + kPrefixLen, bufs[i], msgs[i].msg_len);
      used += kPrefixLen + msgs[i].msg_len;
    }
    wiov[0] = {lines, used};
    iovcnt = 1;
  } else {
    for (int i = 0; i < n; i++) wiov[i] = {bufs[i], msgs[i].msg_len};
  }
  if (writev(out, wiov, iovcnt) < 0) perror("nullrecv: writev");
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  int port = 0, rbuf = 8 << 20, from = 1;
  std::string mode = "null", file;
  for (int i = 1; i < argc; i++) {
    const char* eq = strchr(argv[i], '=');
    std::string k = eq ? std::string(argv[i], size_t(eq - argv[i])) : argv[i];
    if (k == "port") port = atoi(eq + 1);
    else if (k == "rbuf") rbuf = atoi(eq + 1);
    else if (k == "from") from = atoi(eq + 1);
    else if (k == "mode") mode = eq + 1;
    else if (k == "file") file = eq + 1;
    else {
      fprintf(stderr, "usage: nullrecv port=P [rbuf=N] [mode=null|plain|pause|writer|format] [from=0] [file=F]\n");
      return 2;
    }
  }
  bool classic = mode == "null" || mode == "plain";  // a blocking recvmmsg per wakeup
  int fd = socket(AF_INET6, SOCK_DGRAM | (classic ? 0 : SOCK_NONBLOCK), 0);
  int off = 0, on = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rbuf, sizeof rbuf) < 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rbuf, sizeof rbuf);
  bool prefixed = mode == "format";
  bool stamps = mode == "writer" || prefixed;
  bool addresses = stamps && from;
  if (stamps) setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
  sockaddr_in6 a = {};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(uint16_t(port));
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    perror("nullrecv: bind");
    return 1;
  }
  struct sigaction sa = {};
  sa.sa_handler = on_term;  // no SA_RESTART: the waits return EINTR
  sigaction(SIGTERM, &sa, nullptr);
  for (int i = 0; i < kBatch; i++) {
    iov[i] = {bufs[i], sizeof bufs[i]};
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int out = file.empty() ? -1 : open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  printf("nullrecv: listening, mode=%s\n", mode.c_str());
  fflush(stdout);
  unsigned long long total = 0;
  if (classic) {
    while (!stop) total += unsigned(batch(fd, out, false, false, false, MSG_WAITFORONE));
  } else {  // pause, writer, format: udplogger's batching without its work
    int ep = epoll_create1(0);
    epoll_event ev = {};
    ev.events = EPOLLIN;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    ul::Pacer pacer;
    long pause_ns = 0;
    while (!stop) {
      if (pause_ns > 0) {
        timespec t = {0, pause_ns};
        nanosleep(&t, nullptr);
      }
      if (epoll_wait(ep, &ev, 1, pause_ns > 0 ? 0 : -1) <= 0) {
        pause_ns = 0;
        continue;
      }
      uint64_t got = 0;
      bool drained = false;
      for (int b = 0; b < 64 && !drained; b++) {
        int n = batch(fd, out, stamps, addresses, prefixed, MSG_DONTWAIT);
        got += uint64_t(n);
        drained = n < kBatch;
      }
      total += got;
      long pause = pacer.woke(got, monotonic_ns());
      pause_ns = drained ? pause : 0;
    }
  }
  printf("nullrecv: received %llu datagrams\n", total);
  return 0;
}
