#include "serve/http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace embstore::serve {
namespace {

constexpr size_t kMaxRequestBytes = 8192;
constexpr int kIoTimeoutMs = 2000;

using Clock = std::chrono::steady_clock;

int MsLeft(Clock::time_point give_up) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(give_up - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

// Sends all of `data` before `give_up` (one deadline for the whole reply: a
// client reading a byte at a time cannot hold the endpoint).
bool SendAll(int fd, Clock::time_point give_up, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const int left = MsLeft(give_up);
    if (left == 0) return false;
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, left) <= 0) return false;
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

std::string Reply(const char* status, const char* content_type, const std::string& body) {
  return std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + content_type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
         body;
}

}  // namespace

Status SplitHostPort(const std::string& address, const std::string& flag, std::string* host,
                     int* port) {
  const std::string bad = flag + " must be HOST:PORT or [IPV6]:PORT (got '" + address + "')";
  size_t colon = std::string::npos;
  if (!address.empty() && address[0] == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':')
      return Status::InvalidArgument(bad);
    *host = address.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = address.rfind(':');
    if (colon == std::string::npos || colon == 0) return Status::InvalidArgument(bad);
    *host = address.substr(0, colon);
    if (host->find(':') != std::string::npos) return Status::InvalidArgument(bad);
  }
  const std::string p = address.substr(colon + 1);
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos)
    return Status::InvalidArgument(bad);
  *port = std::stoi(p);
  if (*port > 65535) return Status::InvalidArgument(flag + ": port " + p + " is over 65535");
  if (host->empty()) return Status::InvalidArgument(bad);
  return Status::OK();
}

bool IsLoopbackHost(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr a{};
  if (::inet_pton(AF_INET, host.c_str(), &a) == 1) return (ntohl(a.s_addr) >> 24) == 127;
  return false;
}

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, std::function<std::string()> render) {
  std::string host;
  int port = 0;
  EMBSTORE_RETURN_IF_ERROR(SplitHostPort(address, "--metrics", &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port_str = std::to_string(port);
  if (const int rc = ::getaddrinfo(host.c_str(), port_str.c_str(), &hints, &found); rc != 0) {
    return Status::InvalidArgument("--metrics: cannot resolve '" + host +
                                   "': " + ::gai_strerror(rc));
  }
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  std::string last_error = "no address";
  for (addrinfo* ai = found; ai != nullptr && server->listen_fd_ < 0; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 16) == 0) {
      server->listen_fd_ = fd;
      sockaddr_storage bound{};
      socklen_t len = sizeof bound;
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
      server->port_ = bound.ss_family == AF_INET6
                          ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                          : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    } else {
      last_error = std::strerror(errno);
      ::close(fd);
    }
  }
  ::freeaddrinfo(found);
  if (server->listen_fd_ < 0) {
    return Status::IOError("--metrics: cannot listen on " + address + ": " + last_error);
  }
  if (::pipe2(server->wake_, O_CLOEXEC) != 0) {
    return Status::IOError(std::string("--metrics: pipe: ") + std::strerror(errno));
  }
  server->render_ = std::move(render);
  MetricsHttpServer* raw = server.get();
  server->thread_ = std::thread([raw] { raw->Loop(); });
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  Stop();
  for (int fd : {listen_fd_, wake_[0], wake_[1]})
    if (fd >= 0) ::close(fd);
}

void MetricsHttpServer::Stop() {
  if (stopped_.exchange(true)) return;
  if (wake_[1] >= 0) {
    const char b = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_[1], &b, 1);
  }
  if (thread_.joinable()) thread_.join();
}

void MetricsHttpServer::Loop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    const int n = ::poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (p[1].revents & POLLIN) || stopped_.load()) return;
    if (!(p[0].revents & POLLIN)) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // Out of descriptors (or the like): the socket stays readable, so
      // wait a little instead of spinning.
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
        pollfd w{wake_[0], POLLIN, 0};
        ::poll(&w, 1, 100);
      }
      continue;
    }
    Serve(fd);
    // Half-close, then read what the client still sends (briefly), so that
    // closing with unread bytes does not reset the connection and lose the
    // reply.
    ::shutdown(fd, SHUT_WR);
    const auto linger = Clock::now() + std::chrono::milliseconds(200);
    char sink[1024];
    for (int left; (left = MsLeft(linger)) > 0;) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, left) <= 0 || ::recv(fd, sink, sizeof sink, 0) <= 0) break;
    }
    ::close(fd);
  }
}

void MetricsHttpServer::Serve(int fd) {
  std::string request;
  // One deadline for reading the request and sending the reply.
  const auto give_up = Clock::now() + std::chrono::milliseconds(kIoTimeoutMs);
  while (request.find("\r\n\r\n") == std::string::npos &&
         request.find("\n\n") == std::string::npos) {
    if (request.size() >= kMaxRequestBytes) {
      SendAll(fd, give_up,
              Reply("431 Request Header Fields Too Large", "text/plain", "too large\n"));
      return;
    }
    const int left = MsLeft(give_up);
    if (left == 0) return;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) return;
    char buf[2048];
    const ssize_t got = ::recv(fd, buf, sizeof buf, 0);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (got <= 0) return;
    request.append(buf, static_cast<size_t>(got));
  }
  const size_t line_end = request.find_first_of("\r\n");
  const std::string line = request.substr(0, line_end);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  if (sp2 == std::string::npos || line.compare(sp2 + 1, 5, "HTTP/") != 0) {
    SendAll(fd, give_up, Reply("400 Bad Request", "text/plain", "bad request\n"));
    return;
  }
  const std::string method = line.substr(0, sp1);
  std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (const size_t q = target.find('?'); q != std::string::npos) target.resize(q);
  if (target != "/metrics") {
    SendAll(fd, give_up, Reply("404 Not Found", "text/plain", "only /metrics is served here\n"));
    return;
  }
  if (method != "GET" && method != "HEAD") {
    SendAll(fd, give_up, Reply("405 Method Not Allowed", "text/plain", "GET /metrics\n"));
    return;
  }
  std::string reply = Reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", render_());
  if (method == "HEAD") reply.resize(reply.find("\r\n\r\n") + 4);
  SendAll(fd, give_up, reply);
}

}  // namespace embstore::serve
