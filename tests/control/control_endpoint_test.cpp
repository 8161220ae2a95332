// The control endpoint without a job: bearer tokens (a refused request runs nothing and is
// logged), routes and methods, bad bodies (a NUL in a string is refused naming the field), the
// request counter, and the job directory (a token only its user can read, names taken by running
// jobs, jobs that died).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include <prometheus/registry.h>

#include "runtime/control/control_server.hpp"
#include "runtime/control/http_client.hpp"
#include "runtime/control/http_server.hpp"
#include "runtime/control/job_directory.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/command_runs.hpp"

namespace {

namespace fs = std::filesystem;
using namespace troupe;
using ::testing::HasSubstr;

class ControlEndpoint : public ::testing::Test {
 protected:
  ControlEndpoint() {
    std::map<std::string, control_command> commands{
        {"status",
         [](const nlohmann::json&) {
           return control_reply{200, {{"state", "running"}}};
         }},
        {"pause",
         [this](const nlohmann::json& request) {
           ++pauses_;
           return control_reply{200, {{"paused", true}, {"echo", request}}};
         }},
        {"swap",
         [this](const nlohmann::json&) {
           ++swaps_;
           return control_error(422, "the library does not load");
         }},
    };
    server_ = std::make_unique<control_server>("127.0.0.1", 0, "sesame", commands, registry_,
                                               [this](const std::string& line) {
                                                 std::lock_guard lock(mutex_);
                                                 log_.push_back(line);
                                               });
  }
  http_response call(const std::string& method, const std::string& target,
                     const std::string& token = "sesame", const std::string& body = "") {
    return http_call(server_->url(), method, target, token, body, 10);
  }
  std::string log() {
    std::lock_guard lock(mutex_);
    std::string all;
    for (const auto& line : log_) all += line + "\n";
    return all;
  }
  double requests(const std::string& command, const std::string& code) {
    for (const auto& family : registry_.Collect())
      if (family.name == "troupe_control_requests_total")
        for (const auto& m : family.metric) {
          std::map<std::string, std::string> labels;
          for (const auto& l : m.label) labels[l.name] = l.value;
          if (labels["command"] == command && labels["code"] == code) return m.counter.value;
        }
    return 0.0;
  }

  prometheus::Registry registry_;
  std::atomic<int> pauses_{0}, swaps_{0};
  std::mutex mutex_;
  std::vector<std::string> log_;
  std::unique_ptr<control_server> server_;
};

TEST_F(ControlEndpoint, TheRightTokenGetsTheCommandsJsonReply) {
  EXPECT_THAT(server_->url(), HasSubstr("http://127.0.0.1:"));
  const auto status = call("GET", "/v1/status");
  EXPECT_EQ(status.status, 200);
  EXPECT_EQ(nlohmann::json::parse(status.body).at("state"), "running");
  const auto pause = call("POST", "/v1/pause", "sesame", R"({"why": "maintenance"})");
  EXPECT_EQ(pause.status, 200);
  EXPECT_EQ(nlohmann::json::parse(pause.body).at("echo").at("why"), "maintenance");
  EXPECT_EQ(pauses_, 1);
  EXPECT_EQ(requests("pause", "200"), 1.0);
}

TEST_F(ControlEndpoint, AWrongOrMissingTokenIsRefusedLoggedAndRunsNothing) {
  for (const std::string token : {"", "open-sesame", "sesamE"}) {
    const auto reply = call("POST", "/v1/pause", token);
    EXPECT_EQ(reply.status, 401) << token;
    EXPECT_THAT(reply.body, HasSubstr("missing or wrong token"));
  }
  EXPECT_EQ(pauses_, 0);
  EXPECT_THAT(log(), HasSubstr("refused POST /v1/pause from 127.0.0.1:"));
  EXPECT_THAT(log(), HasSubstr("no token"));
  EXPECT_THAT(log(), HasSubstr("wrong token"));
  EXPECT_EQ(requests("pause", "401"), 3.0);
}

TEST_F(ControlEndpoint, UnknownRoutesWrongMethodsAndBadBodiesAreClearErrors) {
  const auto unknown = call("POST", "/v1/reboot");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_THAT(unknown.body, HasSubstr("pause, status, swap"));
  EXPECT_EQ(call("GET", "/v1/pause").status, 405);
  EXPECT_EQ(call("POST", "/v1/status").status, 405);
  const auto bad = call("POST", "/v1/pause", "sesame", "{not json");
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(bad.body, HasSubstr("bad request body"));
  EXPECT_EQ(call("POST", "/v1/pause", "sesame", "[1, 2]").status, 400);
  const auto failed = call("POST", "/v1/swap");
  EXPECT_EQ(failed.status, 422);
  EXPECT_THAT(log(), HasSubstr("swap from 127.0.0.1:"));
  EXPECT_THAT(log(), HasSubstr("the library does not load"));
  EXPECT_EQ(pauses_, 0);
}

TEST_F(ControlEndpoint, ANulInASwapPathIsRefusedNamingTheField) {
  // A C string of the path would end at the NUL: "/tmp/libtroupe-moe.so" would be loaded.
  const auto reply = call("POST", "/v1/swap", "sesame",
                          R"({"plugin": "moe", "library": "/tmp/libtroupe-moe.so\u0000.txt"})");
  EXPECT_EQ(reply.status, 400);
  EXPECT_THAT(reply.body, HasSubstr(R"(bad request body: \"library\" holds a NUL character)"));
  const auto nested =
      call("POST", "/v1/swap", "sesame", R"({"plugin": "moe", "x": [{"y": "a\u0000"}]})");
  EXPECT_EQ(nested.status, 400);
  EXPECT_THAT(nested.body, HasSubstr(R"(\"x/0/y\" holds a NUL character)"));
  // However deep it hides (the walk needs no stack of the thread's).
  const int depth = 200000;
  const auto deep =
      call("POST", "/v1/swap", "sesame",
           R"({"x": )" + std::string(depth, '[') + R"("\u0000")" + std::string(depth, ']') + "}");
  EXPECT_EQ(deep.status, 400);
  EXPECT_THAT(deep.body, HasSubstr(R"(\"x/0/0/0/)"));
  const auto key = call("POST", "/v1/swap", "sesame", R"({"plugin": "moe", "a\u0000b": 1})");
  EXPECT_EQ(key.status, 400);
  EXPECT_THAT(key.body, HasSubstr(R"(\"a\\u0000b\" holds a NUL character)"));
  EXPECT_EQ(swaps_, 0);
  EXPECT_EQ(requests("swap", "400"), 4.0);
  EXPECT_THAT(log(), HasSubstr("swap from 127.0.0.1:"));
}

TEST_F(ControlEndpoint, AClosedEndpointIsAClearErrorForTheClient) {
  const std::string url = server_->url();
  server_.reset();
  try {
    http_call(url, "GET", "/v1/status", "sesame", "", 5);
    FAIL() << "expected an error";
  } catch (const error& e) {
    EXPECT_THAT(e.what(), HasSubstr(url));
    EXPECT_THAT(e.what(), HasSubstr("cannot connect"));
  }
}

TEST(HttpServer, SilentClientsAreCutOversizedBodiesRefusedAndSlowRepliesTimeOut) {
  using namespace std::chrono_literals;
  http_limits limits;
  limits.header_deadline = 500ms;
  http_server server(
      "127.0.0.1", 0,
      [](const http_request& request) {
        if (request.target == "/slow") std::this_thread::sleep_for(3s);
        return http_reply{200, R"({"ok": true})"};
      },
      limits);
  // A client that connects and sends nothing is answered 408 and cut after the deadline.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(server.port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  const auto start = std::chrono::steady_clock::now();
  char buffer[512];
  std::string answer;
  for (ssize_t n; (n = ::read(fd, buffer, sizeof(buffer))) > 0;) answer.append(buffer, n);
  ::close(fd);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_THAT(answer, HasSubstr("408"));
  EXPECT_THAT(answer, HasSubstr("no complete request line and headers within 500 ms"));
  // Bodies over 1 MiB: 413.
  const auto big = http_call(server.url(), "POST", "/x", "", std::string(2 << 20, 'x'), 10);
  EXPECT_EQ(big.status, 413);
  // A reply slower than the client's timeout: a clear error, in about the timeout.
  try {
    http_call(server.url(), "GET", "/slow", "", "", 1);
    FAIL() << "expected a timeout";
  } catch (const error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no reply within 1 s"));
  }
  EXPECT_EQ(http_call(server.url(), "GET", "/fast", "", "", 10).status, 200);
}

TEST(JobDirectory, TheTokenIsReadableOnlyByItsUserAndGoesWithTheJob) {
  const fs::path run = troupe::testing::scratch_dir("control", "token");
  fs::path dir;
  {
    job_directory job(run, "tiny", false);
    job.publish("http://127.0.0.1:1234", "topologies/tiny.toml");
    dir = job.path();
    struct stat token_stat {};
    ASSERT_EQ(::stat(job.token_file().c_str(), &token_stat), 0);
    EXPECT_EQ(token_stat.st_mode & 0777, 0600u);
    struct stat dir_stat {};
    ASSERT_EQ(::stat(dir.c_str(), &dir_stat), 0);
    EXPECT_EQ(dir_stat.st_mode & 0777, 0700u);
    EXPECT_EQ(job.token().size(), 64u);

    const auto found = find_job("tiny", run);
    EXPECT_EQ(found.token, job.token());
    EXPECT_EQ(found.record.url, "http://127.0.0.1:1234");
    EXPECT_EQ(found.record.pid, ::getpid());
    EXPECT_EQ(find_job(dir.string(), run).token, job.token());  // by directory too

    // A second job of the same name gets the next free one, unless the name was asked for.
    job_directory second(run, "tiny", false);
    EXPECT_EQ(second.name(), "tiny-2");
    try {
      job_directory exact(run, "tiny", true);
      FAIL() << "expected an error";
    } catch (const error& e) {
      EXPECT_THAT(e.what(), HasSubstr("job 'tiny' is running already"));
    }
  }
  EXPECT_FALSE(fs::exists(dir / "token"));
  EXPECT_FALSE(fs::exists(dir / "control.json"));
}

TEST(JobDirectory, MissingAndDeadJobsAreClearErrorsThatListTheRunningOnes) {
  const fs::path run = troupe::testing::scratch_dir("control", "missing");
  job_directory running(run, "alive", false);
  running.publish("http://127.0.0.1:1", "a.toml");
  // A job that died left its files: its pid is gone.
  fs::create_directories(run / "dead");
  std::ofstream(run / "dead" / "control.json")
      << R"({"job": "dead", "url": "http://127.0.0.1:2", "pid": 999999999, "token_file": "x"})";
  try {
    find_job("dead", run);
    FAIL() << "expected an error";
  } catch (const error& e) {
    EXPECT_THAT(e.what(), HasSubstr("names pid 999999999, which is gone"));
    EXPECT_THAT(e.what(), HasSubstr("alive (http://127.0.0.1:1"));
  }
  try {
    find_job("nobody", run);
    FAIL() << "expected an error";
  } catch (const error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no running job 'nobody'"));
    EXPECT_THAT(e.what(), HasSubstr("does not exist"));
  }
  // The dead job's name is free to take.
  job_directory again(run, "dead", true);
  EXPECT_EQ(again.name(), "dead");
}

TEST(JobDirectory, AJobDirectoryOthersMayWriteIsRefused) {
  // Whoever may write it could replace control.json and collect the token.
  const fs::path run = troupe::testing::scratch_dir("control", "shared");
  fs::create_directories(run / "tiny");
  ::chmod((run / "tiny").c_str(), 0777);
  try {
    find_job("tiny", run);
    FAIL() << "expected an error";
  } catch (const error& e) {
    EXPECT_THAT(e.what(), HasSubstr("others may write it (mode 777)"));
  }
  // A job claiming the name makes its own directory private again.
  job_directory claimed(run, "tiny", true);
  struct stat info {};
  ASSERT_EQ(::stat(claimed.path().c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0700u);
}

}  // namespace
