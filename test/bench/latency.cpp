// Latency probe for the benchmark: how long from sendto until the line is
// readable in the receiver's file.  One thread sends "lat=N" lines at a
// steady rate from one socket; the main thread waits on inotify for the
// file to grow and notes when each line appears.
//
//   latency port=P file=F rate=R count=N
//
// Prints "latency: rate=R sent=N seen=S p50=X p99=Y max=Z" (milliseconds).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace {

int64_t now_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// Sends count lines at rate per second; sent[i] is when line i left.
void send_lines(int port, long rate, long count, std::vector<int64_t>* sent,
                std::atomic<bool>* done) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in dst = {};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(uint16_t(port));
  dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int64_t start = now_ns();
  for (long i = 0; i < count; i++) {
    int64_t due = start + i * 1000000000 / rate;
    timespec t = {time_t(due / 1000000000), long(due % 1000000000)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, nullptr);
    char line[32];
    int n = snprintf(line, sizeof line, "lat=%010ld\n", i);
    (*sent)[size_t(i)] = now_ns();
    sendto(fd, line, size_t(n), 0, reinterpret_cast<sockaddr*>(&dst), sizeof dst);
  }
  close(fd);
  *done = true;
}

double ms(int64_t ns) { return double(ns) / 1e6; }

}  // namespace

int main(int argc, char** argv) {
  int port = 0;
  long rate = 1000, count = 1000;
  std::string file;
  for (int i = 1; i < argc; i++) {
    const char* eq = strchr(argv[i], '=');
    std::string k = eq ? std::string(argv[i], size_t(eq - argv[i])) : argv[i];
    if (k == "port") port = atoi(eq + 1);
    else if (k == "file") file = eq + 1;
    else if (k == "rate") rate = atol(eq + 1);
    else if (k == "count") count = atol(eq + 1);
    else {
      fprintf(stderr, "usage: latency port=P file=F rate=R count=N\n");
      return 2;
    }
  }
  int in = inotify_init1(IN_NONBLOCK);
  int fd = open(file.c_str(), O_RDONLY);
  if (fd < 0 || in < 0 || inotify_add_watch(in, file.c_str(), IN_MODIFY) < 0) {
    perror(file.c_str());
    return 1;
  }
  lseek(fd, 0, SEEK_END);
  std::vector<int64_t> sent(static_cast<size_t>(count), 0);  // read after the join
  std::vector<int64_t> seen(size_t(count), 0);
  std::atomic<bool> done(false);
  std::thread sender(send_lines, port, rate, count, &sent, &done);
  std::string pending;
  long got = 0;
  int64_t quiet_since = 0;
  char buf[65536];
  while (got < count) {
    pollfd p = {in, POLLIN, 0};
    int r = poll(&p, 1, 100);
    if (r > 0) {
      while (read(in, buf, sizeof buf) > 0) {
      }
    }
    int64_t t = now_ns();
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) pending.append(buf, size_t(n));
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      size_t at = pending.find("lat=", start);
      if (at == std::string::npos || at > nl) continue;
      long id = atol(pending.c_str() + at + 4);
      if (id >= 0 && id < count && seen[size_t(id)] == 0) {
        seen[size_t(id)] = t;
        got++;
      }
    }
    pending.erase(0, start);
    if (done && r == 0) {  // nothing new for 100 ms after the last send: the rest is lost
      if (quiet_since == 0) quiet_since = t;
      if (t - quiet_since > 2000000000) break;
    }
  }
  sender.join();
  std::vector<int64_t> lat;
  for (long i = 0; i < count; i++)
    if (seen[size_t(i)]) lat.push_back(seen[size_t(i)] - sent[size_t(i)]);
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double q) { return lat.empty() ? 0 : lat[size_t(q * double(lat.size() - 1))]; };
  printf("latency: rate=%ld sent=%ld seen=%ld p50=%.3f p99=%.3f max=%.3f\n", rate, count, got,
         ms(pct(0.5)), ms(pct(0.99)), ms(lat.empty() ? 0 : lat.back()));
  return 0;
}
