// etcd for the cluster's tests: Debian's etcd-server on free loopback ports
// with a temporary data dir, started and stopped by the test.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "serve/etcd.h"

namespace embstore::testing {

inline int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||     // NOLINT
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {  // NOLINT
    ::close(fd);
    return 0;
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// etcd on two free loopback ports, data in `dir`; stopped when destroyed.
class EtcdProcess {
 public:
  bool Start(const std::string& dir) {
    std::filesystem::create_directories(dir);
    for (int attempt = 0; attempt < 5; ++attempt) {
      client_port_ = FreePort();
      const int peer = FreePort();
      const std::string c = "http://127.0.0.1:" + std::to_string(client_port_);
      const std::string p = "http://127.0.0.1:" + std::to_string(peer);
      std::vector<std::string> args = {"etcd",
                                       "--name",
                                       "embstore-test",
                                       "--data-dir",
                                       dir + "/etcd",
                                       "--listen-client-urls",
                                       c,
                                       "--advertise-client-urls",
                                       c,
                                       "--listen-peer-urls",
                                       p,
                                       "--initial-advertise-peer-urls",
                                       p,
                                       "--initial-cluster",
                                       "embstore-test=" + p,
                                       "--logger",
                                       "zap",
                                       "--log-outputs",
                                       dir + "/etcd.log"};
      pid_ = ::fork();
      if (pid_ == 0) {
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 1);
        ::dup2(null, 2);
        std::vector<char*> argv;
        for (std::string& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        ::execvp("etcd", argv.data());
        _exit(127);
      }
      // Ready once its port accepts and a read answers (bounded). The port
      // first, with plain connects: a gRPC channel refused at first would
      // wait out its reconnect backoff (a second and more).
      bool open = false;
      for (int i = 0; i < 750 && !open; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<uint16_t>(client_port_));
        open = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;  // NOLINT
        ::close(fd);
        int status = 0;
        if (!open && ::waitpid(pid_, &status, WNOHANG) == pid_) {
          pid_ = -1;
          if (WIFEXITED(status) && WEXITSTATUS(status) == 127) return false;  // no etcd
          break;
        }
        if (!open) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (pid_ < 0) continue;  // a port was taken meanwhile: again
      auto etcd = serve::Etcd::Connect(endpoint(), std::chrono::milliseconds(2000));
      if (!etcd.ok()) return false;
      for (int i = 0; open && i < 150; ++i) {
        if ((*etcd)->Get("/probe").ok()) return true;
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
          pid_ = -1;
          if (WIFEXITED(status) && WEXITSTATUS(status) == 127) return false;  // no etcd
          break;  // a port was taken meanwhile: again
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      Stop();
    }
    return false;
  }
  void Stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  ~EtcdProcess() { Stop(); }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(client_port_); }

 private:
  pid_t pid_ = -1;
  int client_port_ = 0;
};

}  // namespace embstore::testing
