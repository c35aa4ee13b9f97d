// A minimal HTTP/1.x server for one thing: GET /metrics (the Prometheus
// scrape). One connection at a time, each closed after its reply; requests
// are read with a size limit and a timeout, so a stuck or hostile client
// cannot hold it for long. Anything but GET /metrics gets 404 or 405.
#ifndef EMBSTORE_SERVE_HTTP_H_
#define EMBSTORE_SERVE_HTTP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "embstore/status.h"

namespace embstore::serve {

// "HOST:PORT" or "[V6]:PORT" split; InvalidArgument naming `flag` otherwise.
Status SplitHostPort(const std::string& address, const std::string& flag, std::string* host,
                     int* port);

// Whether `host` is a loopback address or name (127.0.0.0/8, ::1, localhost).
bool IsLoopbackHost(const std::string& host);

class MetricsHttpServer {
 public:
  // Listens on `address` (port 0: any free port) and serves `render()` at
  // /metrics from a thread of its own.
  static Result<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                          std::function<std::string()> render);
  ~MetricsHttpServer();  // Stop()
  int port() const { return port_; }
  // Stops accepting and joins the thread (idempotent).
  void Stop();

 private:
  MetricsHttpServer() = default;
  void Loop();
  void Serve(int fd);

  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a pipe: a byte written wakes the loop to stop
  int port_ = 0;
  std::function<std::string()> render_;
  std::thread thread_;
  std::atomic<bool> stopped_{false};
};

}  // namespace embstore::serve

#endif  // EMBSTORE_SERVE_HTTP_H_
