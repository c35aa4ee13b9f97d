// `embstore serve` as a child process for the tests: started on an ephemeral
// loopback port (the port read from its "listening on" line, within a bounded
// wait), always stopped (SIGTERM, then SIGKILL after a bounded wait).
#ifndef EMBSTORE_TESTS_SERVE_TEST_UTIL_H_
#define EMBSTORE_TESTS_SERVE_TEST_UTIL_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace embstore::testing {

class ServeProcess {
 public:
  ServeProcess() = default;
  ServeProcess(const ServeProcess&) = delete;
  ServeProcess& operator=(const ServeProcess&) = delete;
  ~ServeProcess() { Kill(); }

  // Starts `embstore serve --db DB --listen LISTEN [extra...]` and waits (at
  // most 30 s) for its "listening on" line (and its metrics line when
  // --metrics is among `extra`). False, with err() saying why, otherwise.
  bool Start(const std::string& db, const std::vector<std::string>& extra,
             const std::string& listen = "127.0.0.1:0") {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) return false;
    std::vector<std::string> args = {EMBSTORE_CLI, "serve", "--db", db, "--listen", listen};
    args.insert(args.end(), extra.begin(), extra.end());
    bool want_metrics = false;
    for (const std::string& a : extra) want_metrics |= a == "--metrics";
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < give_up) {
      port_ = PortAfter("listening on 127.0.0.1:");
      metrics_port_ = PortAfter("metrics on http://127.0.0.1:");
      if (port_ > 0 && (!want_metrics || metrics_port_ > 0)) return true;
      pollfd p[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
      if (::poll(p, 2, 100) > 0) Drain();
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        Drain();
        pid_ = -1;
        exit_status_ = status;
        return false;
      }
    }
    return false;
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  std::string out() {
    Drain();
    return out_;
  }
  std::string err() {
    Drain();
    return err_;
  }

  // Sends `sig` and waits at most `wait` for the exit; the wait status, or
  // -1 if it did not exit (then it is SIGKILLed).
  int Stop(int sig = SIGTERM, std::chrono::seconds wait = std::chrono::seconds(60)) {
    if (pid_ <= 0) return exit_status_;
    ::kill(pid_, sig);
    const auto give_up = std::chrono::steady_clock::now() + wait;
    int status = 0;
    while (std::chrono::steady_clock::now() < give_up) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        exit_status_ = status;
        Drain();
        return status;
      }
      Drain();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Kill();
    return -1;
  }

  void Kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    Drain();
    for (int* fd : {&out_fd_, &err_fd_}) {
      if (*fd >= 0) ::close(*fd);
      *fd = -1;
    }
  }

 private:
  void Drain() {
    for (auto [fd, buf] : {std::pair{out_fd_, &out_}, std::pair{err_fd_, &err_}}) {
      if (fd < 0) continue;
      for (;;) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP))) break;
        char b[4096];
        const ssize_t n = ::read(fd, b, sizeof b);
        if (n <= 0) break;
        buf->append(b, static_cast<size_t>(n));
      }
    }
  }
  int PortAfter(const std::string& prefix) const {
    const size_t at = out_.find(prefix);
    if (at == std::string::npos) return 0;
    const size_t end = out_.find('\n', at);
    if (end == std::string::npos) return 0;
    return std::atoi(out_.c_str() + at + prefix.size());
  }

  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  int port_ = 0, metrics_port_ = 0;
  int exit_status_ = -1;
  std::string out_, err_;
};

}  // namespace embstore::testing

#endif  // EMBSTORE_TESTS_SERVE_TEST_UTIL_H_
