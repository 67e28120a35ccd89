#include "common/metrics_server.h"

#include <spdlog/spdlog.h>

#include <array>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <thread>

namespace atomdisk::metrics {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

// Requests answered on one keep-alive connection before it is closed.
constexpr int kMaxRequestsPerConnection = 100;

class MetricsServerImpl final : public MetricsServer {
 public:
  MetricsServerImpl(const Registry* registry, ServerLimits limits)
      : registry_(registry), limits_(limits), acceptor_(io_) {}

  ~MetricsServerImpl() override {
    // Stopping the loop ends every coroutine: the handlers still queued, and with them the
    // sessions' sockets, are destroyed with the io_context; the acceptor closes with us.
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

  Status Bind(const std::string& host, std::uint16_t port) {
    const std::string where = (host.find(':') != std::string::npos ? "[" + host + "]" : host) +
                              ":" + std::to_string(port);
    boost::system::error_code ec;
    tcp::resolver resolver(io_);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      return Status::IOError("cannot resolve metrics address " + where + ": " + ec.message());
    }
    tcp::endpoint ep = results.begin()->endpoint();
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      return Status::IOError("cannot listen on metrics address " + where + ": " + ec.message());
    port_ = acceptor_.local_endpoint(ec).port();
    return Status::Ok();
  }

  void Run() {
    asio::co_spawn(io_, AcceptLoop(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }

  std::uint16_t port() const override { return port_; }

 private:
  asio::awaitable<void> AcceptLoop() {
    for (;;) {
      boost::system::error_code ec;
      tcp::socket socket =
          co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (!acceptor_.is_open()) co_return;
      if (ec) {
        // Out of file descriptors and the like: back off instead of spinning.
        asio::steady_timer pause(io_, std::chrono::milliseconds(50));
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      if (active_ >= limits_.max_connections) {
        socket.close(ec);  // over the cap: the scraper retries at its next interval
        continue;
      }
      ++active_;
      asio::co_spawn(io_, Session(std::move(socket)), asio::detached);
    }
  }

  template <class Body>
  static http::response<http::string_body> Plain(const http::request<Body>* req,
                                                 http::status status, std::string body) {
    http::response<http::string_body> res{status, req ? req->version() : 11};
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    res.body() = std::move(body);
    return res;
  }

  asio::awaitable<void> Session(tcp::socket socket) {
    struct Release {
      std::size_t* active;
      ~Release() { --*active; }
    } release{&active_};
    beast::tcp_stream stream(std::move(socket));
    // One deadline for the whole connection: every read and write below counts against it.
    stream.expires_after(limits_.connection_deadline);
    beast::flat_buffer buffer;
    bool linger = false;
    for (int n = 0; n < kMaxRequestsPerConnection; ++n) {
      boost::system::error_code ec;
      http::request_parser<http::string_body> parser;
      parser.header_limit(limits_.max_header_bytes);
      parser.body_limit(limits_.max_body_bytes);
      co_await http::async_read(stream, buffer, parser,
                                asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        http::status status;
        if (ec == http::error::header_limit) {
          status = http::status::request_header_fields_too_large;
        } else if (ec == http::error::body_limit) {
          status = http::status::payload_too_large;
        } else if (ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
                   ec != http::error::end_of_stream && ec != http::error::partial_message) {
          status = http::status::bad_request;  // Beast's parser refused the bytes
        } else {
          break;  // closed by the client, the deadline, or a socket error: nothing to answer
        }
        auto res = Plain<http::string_body>(nullptr, status, ec.message() + "\n");
        res.keep_alive(false);
        res.prepare_payload();
        co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
        linger = !ec;
        break;
      }
      const auto& req = parser.get();
      const std::string_view target(req.target().data(), req.target().size());
      const std::string_view path = target.substr(0, target.find('?'));
      http::response<http::string_body> res;
      if (path != "/metrics") {
        res = Plain(&req, http::status::not_found, "only /metrics is served here\n");
      } else if (req.method() != http::verb::get && req.method() != http::verb::head) {
        res = Plain(&req, http::status::method_not_allowed, "use GET\n");
        res.set(http::field::allow, "GET, HEAD");
      } else {
        res = http::response<http::string_body>{http::status::ok, req.version()};
        res.set(http::field::content_type, kExpositionContentType);
        res.body() = registry_->Render();
      }
      res.keep_alive(req.keep_alive());
      res.prepare_payload();
      if (req.method() == http::verb::head) {
        const std::size_t length = res.body().size();
        res.body().clear();
        res.content_length(length);  // what a GET would carry
      }
      co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
      if (ec || !res.keep_alive()) break;
    }
    boost::system::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    // After refusing a request whose bytes we did not all read, read (and drop) the rest until
    // the client closes or the deadline passes: closing with unread bytes would reset the
    // connection, and the client could lose our answer.
    std::array<char, 4096> scratch;
    while (linger && !ec) {
      co_await stream.async_read_some(asio::buffer(scratch),
                                      asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  const Registry* const registry_;
  const ServerLimits limits_;
  asio::io_context io_{1};
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::uint16_t port_ = 0;
  std::size_t active_ = 0;  // sessions running; server thread only
};

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host,
                                                            std::uint16_t port,
                                                            const Registry* registry,
                                                            ServerLimits limits) {
  ATOMDISK_CHECK(registry != nullptr && limits.max_connections > 0);
  auto server = std::make_unique<MetricsServerImpl>(registry, limits);
  if (Status s = server->Bind(host, port); !s.ok()) return s;
  server->Run();
  return std::unique_ptr<MetricsServer>(std::move(server));
}

}  // namespace atomdisk::metrics
