#include "daemon/net/peer_liveness.h"

#include <utility>

namespace atomdisk {

PeerLiveness::PeerLiveness(std::string name, std::int64_t timeout_ms)
    : name_(std::move(name)), timeout_ms_(timeout_ms) {}

bool PeerLiveness::MayLog(std::int64_t now_us) {
  if (logged_once_ && now_us - last_log_us_ < kLogQuietUs) {
    ++unlogged_;
    return false;
  }
  logged_once_ = true;
  last_log_us_ = now_us;
  return true;
}

void PeerLiveness::OnOpened(std::int64_t now_us) {
  open_ = true;
  next_ping_us_ = now_us;  // the first Ping at once: it proves the link and measures it
  pending_ping_id_ = 0;
}

std::optional<std::string> PeerLiveness::OnConnected(std::int64_t now_us) {
  connected_ = true;
  open_ = true;
  dial_failure_logged_ = false;
  if (!ever_connected_) {
    ever_connected_ = true;
    return name_ + " connected";
  }
  // The "back" line goes with its "lost" line: both or neither, so that the log never
  // shows a peer back that it did not show lost.
  if (!loss_logged_) return std::nullopt;
  loss_logged_ = false;
  const std::int64_t down_ms = (now_us - lost_at_us_) / 1000;
  return name_ + " back after " + std::to_string(down_ms) + " ms down";
}

std::optional<std::string> PeerLiveness::OnLost(std::int64_t now_us, const std::string& reason) {
  connected_ = false;
  open_ = false;
  ++losses_;
  last_loss_ = reason.empty() ? "closed" : reason;
  lost_at_us_ = now_us;
  pending_ping_id_ = 0;
  loss_logged_ = MayLog(now_us);
  if (!loss_logged_) return std::nullopt;
  std::string line = name_ + " lost: " + last_loss_ + "; reconnecting";
  if (unlogged_ > 0) {
    line += " (" + std::to_string(unlogged_) + " losses in the last " +
            std::to_string(kLogQuietUs / 1'000'000) + " s not logged)";
    unlogged_ = 0;
  }
  return line;
}

std::optional<std::string> PeerLiveness::OnDialFailed(const std::string& reason) {
  open_ = false;
  pending_ping_id_ = 0;
  if (ever_connected_) {
    // A lost link already logged its outage; remember the latest cause for status.
    if (!connected_ && !reason.empty()) last_loss_ = reason;
    return std::nullopt;
  }
  if (dial_failure_logged_) return std::nullopt;
  dial_failure_logged_ = true;
  last_loss_ = reason;
  return name_ + " unreachable: " + reason + "; retrying";
}

std::optional<std::uint64_t> PeerLiveness::PingDue(std::int64_t now_us) {
  if (!open_ || !answers_pings_ || now_us < next_ping_us_) return std::nullopt;
  next_ping_us_ = now_us + ping_interval_us();
  pending_ping_id_ = next_ping_id_++;
  pending_ping_sent_us_ = now_us;
  return pending_ping_id_;
}

std::optional<std::int64_t> PeerLiveness::OnPong(std::uint64_t id, std::int64_t now_us) {
  if (id == 0 || id != pending_ping_id_) return std::nullopt;  // late or foreign
  pending_ping_id_ = 0;
  rtt_us_ = now_us - pending_ping_sent_us_;
  return rtt_us_;
}

std::optional<std::int64_t> PeerLiveness::heard_ago_us(std::int64_t now_us) const {
  if (!heard_us_) return std::nullopt;
  return now_us - *heard_us_;
}

}  // namespace atomdisk
