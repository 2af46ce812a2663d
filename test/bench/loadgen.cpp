// Load generator for the benchmark: sends datagrams to a loopback port
// from many sockets with sendmmsg, paced or flat out.  Every datagram
// carries a sequence number, so a receiver's losses can be counted exactly.
//
//   loadgen port=P count=N senders=S [rate=R] [len=L] [mode=M] [distinct=1]
//
// mode=line     legacy lines of len bytes (default)
// mode=partial  each sender sends one line of len bytes without a newline
// mode=ext      extended netconsole records of len bytes
// mode=frag     extended records of 2500 bytes, cut into 3 fragments
// distinct=1    each sender from its own 127.x.y.z address
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace {

struct Args {
  int port = 6666;
  long count = 100000;
  int senders = 16;
  long rate = 0;  // datagrams per second, 0: flat out
  int len = 100;
  std::string mode = "line";
  bool distinct = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; i++) {
    const char* eq = strchr(argv[i], '=');
    if (!eq) {
      fprintf(stderr, "loadgen: bad argument %s\n", argv[i]);
      exit(2);
    }
    std::string k(argv[i], size_t(eq - argv[i]));
    const char* v = eq + 1;
    if (k == "port") a.port = atoi(v);
    else if (k == "count") a.count = atol(v);
    else if (k == "senders") a.senders = atoi(v);
    else if (k == "rate") a.rate = atol(v);
    else if (k == "len") a.len = atoi(v);
    else if (k == "mode") a.mode = v;
    else if (k == "distinct") a.distinct = atoi(v) != 0;
    else {
      fprintf(stderr, "loadgen: unknown option %s\n", k.c_str());
      exit(2);
    }
  }
  return a;
}

double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

// The payloads sender `host` sends as its n-th message.
void payloads(const Args& a, long seq, int host, uint64_t record, std::vector<std::string>* out) {
  out->clear();
  char head[96];
  if (a.mode == "line" || a.mode == "partial") {
    int n = snprintf(head, sizeof head, "seq=%010ld host=%05d ", seq, host);
    std::string s(head, size_t(n));
    if (int(s.size()) < a.len - 1) s.append(size_t(a.len - 1) - s.size(), 'x');
    if (a.mode == "line") s += '\n';
    out->push_back(s);
  } else if (a.mode == "ext") {
    int n = snprintf(head, sizeof head, "6,%llu,%llu,-;seq=%010ld host=%05d ",
                     (unsigned long long)record, (unsigned long long)record * 1000, seq, host);
    std::string s(head, size_t(n));
    if (int(s.size()) < a.len - 1) s.append(size_t(a.len - 1) - s.size(), 'x');
    out->push_back(s + "\n");
  } else {  // frag: 2500 bytes of escaped body, 3 fragments
    char body[2600];
    int n = snprintf(body, sizeof body, "seq=%010ld host=%05d ", seq, host);
    memset(body + n, 'y', size_t(2499 - n));
    body[2499] = '\n';
    for (int off = 0; off < 2500; off += 1000) {
      int h = snprintf(head, sizeof head, "6,%llu,%llu,-,ncfrag=%d/2500;",
                       (unsigned long long)record, (unsigned long long)record * 1000, off);
      int take = 2500 - off < 1000 ? 2500 - off : 1000;
      out->push_back(std::string(head, size_t(h)) + std::string(body + off, size_t(take)));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  rlimit rl = {65536 + 64, 65536 + 64};
  setrlimit(RLIMIT_NOFILE, &rl);
  std::vector<int> fds(size_t(a.senders));
  for (int i = 0; i < a.senders; i++) {
    fds[size_t(i)] = socket(AF_INET, SOCK_DGRAM, 0);
    if (fds[size_t(i)] < 0) {
      perror("loadgen: socket");
      return 1;
    }
    int big = 1 << 20;
    setsockopt(fds[size_t(i)], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    sockaddr_in src = {};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(a.distinct ? (127u << 24) | uint32_t(1 + i / 250) << 8 | uint32_t(1 + i % 250)
                                           : INADDR_LOOPBACK);
    if (bind(fds[size_t(i)], reinterpret_cast<sockaddr*>(&src), sizeof src) < 0) {
      perror("loadgen: bind");
      return 1;
    }
  }
  sockaddr_in dst = {};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(uint16_t(a.port));
  dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  // Round robin over the senders, a few messages at a time each.
  const int per_turn = a.senders >= 1000 ? 1 : 8;
  std::vector<uint64_t> records(size_t(a.senders), 1);
  std::vector<std::string> parts, batch;
  std::vector<mmsghdr> msgs(64);
  std::vector<iovec> iovs(64);
  double start = now();
  long seq = 0, datagrams = 0, errors = 0;
  int host = 0;
  while (seq < a.count) {
    batch.clear();
    for (int k = 0; k < per_turn && seq < a.count; k++, seq++) {
      payloads(a, seq, host, records[size_t(host)]++, &parts);
      for (std::string& p : parts) batch.push_back(p);
    }
    if (a.mode == "frag" && (seq / per_turn) % 3 == 0 && batch.size() >= 3)
      std::swap(batch[0], batch[2]);  // some fragments out of order
    size_t n = batch.size();
    for (size_t i = 0; i < n; i++) {
      iovs[i].iov_base = &batch[i][0];
      iovs[i].iov_len = batch[i].size();
      msgs[i] = mmsghdr{};
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &dst;
      msgs[i].msg_hdr.msg_namelen = sizeof dst;
    }
    size_t sent = 0;
    while (sent < n) {
      int r = sendmmsg(fds[size_t(host)], &msgs[sent], unsigned(n - sent), 0);
      if (r <= 0) {
        errors++;
        break;
      }
      sent += size_t(r);
    }
    datagrams += long(sent);
    host = (host + 1) % a.senders;
    if (a.rate > 0) {  // pace: never ahead of the schedule
      double due = start + double(datagrams) / double(a.rate);
      double t = now();
      if (due > t) usleep(useconds_t((due - t) * 1e6));
    }
  }
  double took = now() - start;
  printf("loadgen: sent %ld datagrams (%ld messages) in %.3f s, %.0f/s, %ld send errors\n",
         datagrams, seq, took, double(datagrams) / took, errors);
  return 0;
}
