// ClientChannel: one client connection as the node core sees it (daemon/core/node_core.h):
// where its responses go and how much work it has open. The daemon's Connection
// (daemon/net/connection.h) is one; a simulated client connection is another.
#pragma once

#include <memory>
#include <string>

#include "common/wire.h"

namespace atomdisk {

using SharedFrame = std::shared_ptr<const Frame>;

// Owned by whoever accepted the connection; the core keeps only weak references
// (WeakChannel), so a client that went away costs nothing. Called on the core's thread.
class ClientChannel {
 public:
  virtual ~ClientChannel() = default;
  // Queues an encoded frame; false (and dropped) when closed or full.
  virtual bool SendFrame(SharedFrame frame) = 0;
  // Closes the channel after a protocol error; `reason` is logged when not empty.
  virtual void CloseChannel(const std::string& reason) = 0;
  virtual bool channel_closed() const = 0;
  virtual const std::string& channel_name() const = 0;
  // One operation started / answered on this channel (reading pauses while many are open).
  virtual void OpStarted() = 0;
  virtual void OpFinished() = 0;
  virtual std::weak_ptr<ClientChannel> WeakChannel() = 0;
  // A frame on this channel carried a tag that verifies with a key of the cluster (the
  // daemon then lifts its deadline for a connection's first such frame). Nothing by default.
  virtual void MarkAuthenticated() {}
  // Whether this is a TLS connection whose peer's certificate verified: its frames carry a
  // zero tag instead of an HMAC (docs/TLS.md, "No HMAC inside TLS").
  virtual bool channel_tls() const { return false; }
};

}  // namespace atomdisk
