// charging-grpc-door: the compiled gRPC door in front of the charging server's workers.
//
// Why it exists (README "The compiled gRPC door"): under Python's grpc.aio a unary call
// costs the server about as much again in wake-ups and thread hand-offs as the charging
// work itself; gRPC's C++ core serves a unary call for a fraction of that. The door
// answers the network's unary ChargeSession and ChargeEvent calls itself and carries
// their requests to the workers as ChargeBatches streams (several requests per stream
// message, each answered on its own), and passes every other call through unchanged.
// It holds no charging state and makes no charging decision: the workers do, with the
// same code, scripts and checks as for a direct call.
//
// Security. The door listens where the server would (plaintext only as the supervisor
// decided: loopback development, or CHARGING_INSECURE), with the server's certificate
// and, when a client CA is set, client certificates required and verified (files
// watched, so renewed certificates apply without a restart). The workers listen on Unix
// sockets in a directory only the server's user can open, and identify callers from what
// the door forwards: the verified certificate's SAN URIs and DNS names
// ("charging-door-peer-uri", "charging-door-peer-dns") and the caller's own
// "authorization". A caller's metadata named "charging-door-*" is dropped, so nobody
// can claim an identity through the door. Authorization stays with the workers' guard:
// requests of different callers never share a stream (one stream per caller identity,
// token and gateway); the worker judges a stream's caller again once a second while
// requests flow (a revoked token ends the stream with the refusal, which the calls
// waiting on it get), and a stream is replaced after --stream-max-age-s.
//
// Wire format: the requests are carried as bytes. A ChargeMessage is built around the
// caller's serialized request and a ChargeReply is taken apart (field numbers of
// protos/charging/v1/charging.proto), so the door needs no generated code and never
// re-encodes a request.

#include <grpc/grpc.h>
#include <grpc/grpc_security_constants.h>
#include <grpc/slice.h>
#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using grpc::ByteBuffer;
using grpc::Status;
using grpc::StatusCode;
using Clock = std::chrono::steady_clock;

constexpr char kSession[] = "/charging.v1.Charging/ChargeSession";
constexpr char kEvent[] = "/charging.v1.Charging/ChargeEvent";
constexpr char kBatches[] = "/charging.v1.Charging/ChargeBatches";
constexpr char kDoorPrefix[] = "charging-door-";
// ChargeMessage: correlation_id = 1, session = 2, event = 3. ChargeReply: correlation_id
// = 1, session = 2, event = 3, error = 4 (ChargeError: code = 1, message = 2).
// ChargeBatch.messages = 1, ChargeReplies.replies = 1.
constexpr int kSessionField = 2;
constexpr int kEventField = 3;
// A batch written to a worker stays well under the worker's 4 MiB receive limit; one
// request alone, with a ChargeMessage's and a ChargeBatch's framing, within it.
constexpr size_t kBatchBytes = 1 << 20;
constexpr size_t kLargestRequest = (4u << 20) - 64;
// The longest a request waits for others to share its message (BatchStream::Ready).
constexpr auto kHoldMax = std::chrono::milliseconds(1);
// Callers (identity, token, gateway) with streams open at once: each costs a stream and a
// task at every worker; beyond it, a new caller is refused until streams age out.
constexpr size_t kMaxCallers = 1024;

struct Options {
  std::string listen, token_listen, cert, key, client_ca;
  std::vector<std::string> upstreams;
  std::vector<std::pair<std::string, int>> server_args;  // --arg NAME=INT: the workers' gRPC server options
  int max_in_flight = 64;                                // requests at a worker at once
  bool hold = true;                                      // --hold 0: write each request at once
  int max_stream_age_s = 30;
  int grace_s = 10;
  int ready_fd = -1;
  std::string metrics_file;  // written once a second when given
};

void log_line(const std::string& what) { std::fprintf(stderr, "charging-grpc-door: %s\n", what.c_str()); }

// ---------------------------------------------------------------------------
// The door's own figures, counted as calls go and written once a second to
// --metrics-file in Prometheus' text format (write_metrics); the supervisor's metrics
// endpoint serves them with the workers' (charging/supervisor.py, DoorMetrics).

// By request (ChargeSession, ChargeEvent) and reason or status; `method` is ChargeBatches,
// the method the workers count the door's requests under.
enum Refusal { kBusy, kDeadline, kCallers, kTooLarge, kNoStream, kRefusals };
const char* const kRefusalNames[kRefusals] = {"busy", "deadline", "callers", "too_large", "no_stream"};
const char* const kRequestNames[2] = {"ChargeSession", "ChargeEvent"};
constexpr int kStatuses = 17;
const char* const kStatusNames[kStatuses] = {
    "OK",           "CANCELLED",     "UNKNOWN",   "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",  "UNAVAILABLE",      "DATA_LOSS",         "UNAUTHENTICATED"};

struct Stats {
  std::atomic<uint64_t> charging[2]{};                 // ChargeSession and ChargeEvent calls read
  std::atomic<uint64_t> passed{0};                     // every other call, passed through
  std::atomic<uint64_t> refused[2][kRefusals]{};       // answered by the door itself
  std::atomic<uint64_t> stream_ends[2][kStatuses]{};  // answered by their stream's end, by status
  std::atomic<uint64_t> streams{0};                    // ChargeBatches streams opened to workers
  std::atomic<uint64_t> messages{0};                   // ChargeBatch messages written to workers
  std::atomic<uint64_t> batched{0};                    // the requests in them
};
Stats stats;

void count(std::atomic<uint64_t>& counter, uint64_t n = 1) { counter.fetch_add(n, std::memory_order_relaxed); }

// ---------------------------------------------------------------------------
// Protocol buffers wire format, the little the door needs.

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

bool get_varint(std::string_view s, size_t& i, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && i < s.size(); shift += 7) {
    auto b = static_cast<uint8_t>(s[i++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

struct Field {
  uint64_t number = 0;
  uint64_t wire = 0;
  uint64_t value = 0;
  std::string_view bytes;
};

// The next field of a message at i: 1, 0 at the end, -1 when malformed.
int next_field(std::string_view s, size_t& i, Field& f) {
  if (i >= s.size()) return 0;
  uint64_t key = 0;
  if (!get_varint(s, i, key)) return -1;
  f.number = key >> 3;
  f.wire = key & 7;
  uint64_t n = 0;
  switch (f.wire) {
    case 0:
      return get_varint(s, i, f.value) ? 1 : -1;
    case 1:
      n = 8;
      break;
    case 5:
      n = 4;
      break;
    case 2:
      if (!get_varint(s, i, n)) return -1;
      break;
    default:
      return -1;
  }
  if (n > s.size() - i) return -1;
  f.bytes = s.substr(i, n);
  i += n;
  return 1;
}

void put_message(std::string& out, int field, std::string_view bytes) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

std::string flat(const ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

ByteBuffer buffer_of(std::string_view bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return ByteBuffer(&slice, 1);
}

// ---------------------------------------------------------------------------
// What a call carries to the workers: the caller's metadata and verified identity.

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

using Metadata = std::vector<std::pair<std::string, std::string>>;

// Whether gRPC's client would send this header: its own checks (a caller's request may
// carry what its server accepts but a client refuses, and the C++ client aborts on it).
bool legal(std::string_view key, std::string_view value) {
  grpc_slice k = grpc_slice_from_static_buffer(key.data(), key.size());
  grpc_slice v = grpc_slice_from_static_buffer(value.data(), value.size());
  return grpc_header_key_is_legal(k) && (grpc_is_binary_header(k) || grpc_header_nonbin_value_is_legal(v));
}

// The metadata a worker sees for this call. For a batched charging call only what the
// workers read on ChargeSession and ChargeEvent (the caller's identity, its token, its
// gateway name), which is also what decides the call's stream.
Metadata forwarded(grpc::CallbackServerContext* ctx, bool charging_only) {
  Metadata out;
  for (const auto& [k, v] : ctx->client_metadata()) {
    std::string_view key(k.data(), k.size());
    if (starts_with(key, kDoorPrefix) || starts_with(key, ":") || starts_with(key, "grpc-") || key == "user-agent" ||
        key == "te" || key == "content-type")
      continue;
    if (charging_only && key != "authorization" && key != "charging-gateway") continue;
    std::string_view value(v.data(), v.size());
    if (!legal(key, value)) continue;  // dropped, as a header the worker could not have read
    out.emplace_back(std::string(key), std::string(value));
  }
  auto auth = ctx->auth_context();
  if (auth && auth->IsPeerAuthenticated()) {
    for (const auto& v : auth->FindPropertyValues(GRPC_PEER_URI_PROPERTY_NAME))
      if (legal("charging-door-peer-uri", std::string_view(v.data(), v.size())))
        out.emplace_back("charging-door-peer-uri", std::string(v.data(), v.size()));
    for (const auto& v : auth->FindPropertyValues(GRPC_PEER_DNS_PROPERTY_NAME))
      if (legal("charging-door-peer-dns", std::string_view(v.data(), v.size())))
        out.emplace_back("charging-door-peer-dns", std::string(v.data(), v.size()));
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string key_of(const Metadata& md) {
  std::string key;
  for (const auto& [k, v] : md) {
    key.append(k).push_back('\0');
    key.append(v).push_back('\0');
  }
  return key;
}

// ---------------------------------------------------------------------------
// A unary charging call, answered from a batch stream.

class ChargingCall final : public grpc::ServerGenericBidiReactor {
 public:
  ChargingCall(class Router* router, grpc::GenericCallbackServerContext* ctx, int field)
      : router_(router), ctx_(ctx), field_(field) {
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override;
  void OnCancel() override { Finish(Status(StatusCode::CANCELLED, "cancelled")); }
  void OnDone() override { Unref(); }
  // From a batch stream; the call takes no notice once finished (cancelled, deadline).
  void Answer(std::string_view bytes) {
    if (!finished_.exchange(true)) {
      response_ = buffer_of(bytes);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), Status::OK);
    }
    Unref();
  }
  // Whether this ended the call (not when its caller had cancelled it already).
  bool Fail(const Status& status) {
    bool ended = Finish(status);
    Unref();
    return ended;
  }
  bool Finish(const Status& status) {
    if (finished_.exchange(true)) return false;
    grpc::ServerGenericBidiReactor::Finish(status);
    return true;
  }
  int request() const { return field_ == kSessionField ? 0 : 1; }  // index of kRequestNames

 private:
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }
  Router* router_;
  grpc::GenericCallbackServerContext* ctx_;
  int field_;
  ByteBuffer request_, response_;
  std::atomic<bool> finished_{false};
  std::atomic<int> refs_{2};  // OnDone, and the stream's answer or failure
};

// A charging call the door answers itself, counted by request and reason.
void refuse(ChargingCall* call, Refusal reason, const Status& status) {
  count(stats.refused[call->request()][reason]);
  call->Fail(status);
}

// One ChargeBatches stream to one worker for one caller. Requests queue while a write
// is in flight and go together in the next message; replies are matched by correlation
// id. When the stream ends, what it had not answered fails: UNAVAILABLE (a retry with
// the same request number is answered once), or the worker's refusal as it came.
class BatchStream final : public grpc::ClientBidiReactor<ByteBuffer, ByteBuffer> {
 public:
  // The stream keeps itself until its OnDone; whoever holds it may still Submit (false).
  static std::shared_ptr<BatchStream> Open(grpc::GenericStub* stub, const Metadata& md, std::atomic<int>* in_flight,
                                           int limit, bool hold, std::function<void(BatchStream*)> on_done) {
    std::shared_ptr<BatchStream> s(new BatchStream(in_flight, limit, hold, std::move(on_done)));
    count(stats.streams);
    s->self_ = s;
    for (const auto& [k, v] : md) s->ctx_.AddMetadata(k, v);
    stub->PrepareBidiStreamingCall(&s->ctx_, kBatches, grpc::StubOptions(), s.get());
    s->StartRead(&s->in_);
    s->AddHold();  // released once the door has no more to write (Retire)
    s->StartCall();
    return s;
  }
  Clock::time_point born() const { return born_; }

  enum Taken { kTaken, kClosed, kBusy };
  // kClosed when the stream has ended or is retiring (the caller takes another); kBusy
  // when its worker has as many requests from the door as it takes at once.
  Taken Submit(ChargingCall* call, int field, std::string_view request) {
    std::string batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (ended_ || retiring_) return kClosed;
      if (in_flight_->fetch_add(1) >= limit_) {
        in_flight_->fetch_sub(1);
        return kBusy;
      }
      uint64_t id = ++next_id_;
      pending_.emplace(id, call);
      std::string one;
      one.push_back(0x08);
      put_varint(one, id);
      put_message(one, field, request);
      if (queued_.empty() || queued_.back().size() + one.size() > kBatchBytes) {
        queued_.emplace_back();
        queued_items_.push_back(0);
      }
      put_message(queued_.back(), 1, one);
      ++queued_items_.back();
      ++unsent_;
      if (!Ready()) {
        Arm();
        return kTaken;
      }
      batch = Take();
    }
    Write(std::move(batch));
    return kTaken;
  }

  bool Usable() {
    std::lock_guard<std::mutex> lock(mu_);
    return !ended_ && !retiring_;
  }

  // No more requests on this stream: close its side once the queue is written; the
  // worker ends the stream after its last answer.
  void Retire() {
    bool close = false;
    std::string batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (retiring_ || ended_) return;
      retiring_ = true;
      if (writing_) return;  // OnWriteDone goes on
      if (!queued_.empty()) {
        batch = Take();  // what was held goes now, then the stream closes
      } else {
        close = true;
        writing_ = true;  // nothing more may be written
      }
    }
    if (!batch.empty()) Write(std::move(batch));
    if (close) Close();
  }

  void OnWriteDone(bool ok) override {
    std::string batch;
    bool close = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok || (retiring_ && queued_.empty())) {
        close = true;
        writing_ = true;  // nothing more may be written
        retiring_ = true;  // the stream is broken: the next request takes another
      } else if ((retiring_ && !queued_.empty()) || Ready()) {
        batch = Take();
      } else if (!queued_.empty()) {
        Arm();
      }
    }
    if (!batch.empty()) {
      Write(std::move(batch));
    } else if (close) {
      Close();
    }
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the worker ended the stream (or it broke): OnDone follows with why
      Retire();
      return;
    }
    std::string replies = flat(in_);
    std::string_view all(replies);
    size_t i = 0;
    Field f;
    int r;
    bool good = true;
    while (good && (r = next_field(all, i, f)) == 1) {
      if (f.number == 1 && f.wire == 2) good = Deliver(f.bytes);
    }
    if (!good || r < 0) {
      // A reply the door cannot match is a worker it cannot trust with the rest: end the
      // stream (its unanswered calls fail UNAVAILABLE) rather than let them wait.
      log_line("a worker's reply did not decode or named no request sent: stream ended");
      ctx_.TryCancel();
      Retire();
      return;
    }
    std::string batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      replied_since_write_ = true;
      if (Ready()) batch = Take();  // requests held while the worker was answering
    }
    if (!batch.empty()) Write(std::move(batch));
    StartRead(&in_);
  }

  void OnDone(const Status& status) override {
    std::map<uint64_t, ChargingCall*> left;
    std::unique_ptr<grpc::Alarm> alarm;  // its fired callback holds a reference to this stream
    {
      std::lock_guard<std::mutex> lock(mu_);
      ended_ = true;
      left.swap(pending_);
      alarm.swap(alarm_);
    }
    alarm.reset();
    in_flight_->fetch_sub(static_cast<int>(left.size()));
    Status why = status;
    if (status.ok() || status.error_code() == StatusCode::CANCELLED || status.error_code() == StatusCode::INTERNAL ||
        status.error_code() == StatusCode::UNKNOWN)
      why = Status(StatusCode::UNAVAILABLE, "the charging worker's stream ended before answering: retry");
    int answered = std::clamp(static_cast<int>(why.error_code()), 0, kStatuses - 1);
    for (auto& [id, call] : left) {
      int request = call->request();
      if (call->Fail(why)) count(stats.stream_ends[request][answered]);
    }
    // A refusal is the worker's to log and count (a caller can cause one per call).
    auto code = status.error_code();
    if (!status.ok() && code != StatusCode::CANCELLED && code != StatusCode::UNAUTHENTICATED &&
        code != StatusCode::PERMISSION_DENIED)
      log_line("a worker stream ended: " + std::to_string(code) + " " + status.error_message());
    on_done_(this);
    auto last = std::move(self_);  // may be the last owner: nothing of this is used after
  }

 private:
  BatchStream(std::atomic<int>* in_flight, int limit, bool hold, std::function<void(BatchStream*)> on_done)
      : born_(Clock::now()), in_flight_(in_flight), limit_(limit), hold_(hold), on_done_(std::move(on_done)) {}

  // Whether to write the next queued message now (under mu_): not while a write is in
  // flight; with hold_, not while requests sent earlier are unanswered either, unless a
  // full message is waiting (Nagle's rule: the worker's next reply sends what came
  // meanwhile as one message, whose per-message cost its requests share).
  // The hold is bounded: the worker answers a stream's requests concurrently, so a reply
  // to any of them since the last write ends it, and so does kHoldMax (an alarm) when one
  // slow request is all the worker has (it must not hold back the requests behind it).
  bool Ready() const {
    if (writing_ || queued_.empty() || retiring_ || ended_) return false;
    return !hold_ || replied_since_write_ || pending_.size() == unsent_ || queued_.size() > 1 || hold_over_;
  }
  // Under mu_, after queueing a request that is not Ready: the alarm that ends its hold.
  void Arm() {
    if (!hold_ || alarm_set_ || writing_) return;  // a write in flight: its OnWriteDone decides
    alarm_set_ = true;
    hold_over_ = false;
    AddHold();  // the call stays open until the alarm has run
    alarm_ = std::make_unique<grpc::Alarm>();
    alarm_->Set(std::chrono::system_clock::now() + kHoldMax, [keep = self_](bool) { keep->HoldOver(); });
  }
  void HoldOver() {
    std::string batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      alarm_set_ = false;
      hold_over_ = !queued_.empty();  // a reply may have sent them already
      if (Ready()) batch = Take();
    }
    if (!batch.empty()) Write(std::move(batch));
    RemoveHold();
  }
  std::string Take() {  // under mu_
    std::string batch;
    batch.swap(queued_.front());
    queued_.pop_front();
    unsent_ -= queued_items_.front();
    count(stats.messages);
    count(stats.batched, queued_items_.front());
    queued_items_.pop_front();
    writing_ = true;
    replied_since_write_ = false;
    hold_over_ = false;
    return batch;
  }
  void Write(std::string batch) {
    out_ = buffer_of(batch);
    StartWrite(&out_);
  }
  void Close() {
    StartWritesDone();
    RemoveHold();
  }
  // False when the reply does not decode or names no request the stream sent.
  bool Deliver(std::string_view reply) {
    size_t i = 0;
    Field f;
    uint64_t id = 0;
    std::string_view answer;
    bool error = false;
    uint64_t code = static_cast<uint64_t>(StatusCode::INTERNAL);
    std::string message;
    int r;
    while ((r = next_field(reply, i, f)) == 1) {
      if (f.number == 1 && f.wire == 0) {
        id = f.value;
      } else if ((f.number == 2 || f.number == 3) && f.wire == 2) {
        answer = f.bytes;
      } else if (f.number == 4 && f.wire == 2) {
        error = true;
        size_t j = 0;
        Field e;
        while (next_field(f.bytes, j, e) == 1) {
          if (e.number == 1 && e.wire == 0) code = e.value;
          if (e.number == 2 && e.wire == 2) message.assign(e.bytes);
        }
      }
    }
    ChargingCall* call = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(id);
      if (r < 0 || it == pending_.end() || id > next_id_ - unsent_) return false;  // not sent yet: not for it
      call = it->second;
      pending_.erase(it);
    }
    in_flight_->fetch_sub(1);
    if (error) {
      auto status = code > 0 && code <= 16 ? static_cast<StatusCode>(code) : StatusCode::UNKNOWN;
      call->Fail(Status(status, message));
    } else {
      call->Answer(answer);
    }
    return true;
  }

  const Clock::time_point born_;
  std::atomic<int>* const in_flight_;  // the worker's, shared by the door's streams to it
  const int limit_;
  const bool hold_;
  std::function<void(BatchStream*)> on_done_;
  std::shared_ptr<BatchStream> self_;
  grpc::ClientContext ctx_;
  ByteBuffer in_, out_;
  std::mutex mu_;
  std::deque<std::string> queued_;  // messages not written yet
  std::deque<size_t> queued_items_;  // requests in each of them
  size_t unsent_ = 0;                // requests queued, not written (all of them in pending_)
  bool replied_since_write_ = true;  // a reply came after the last write began
  bool hold_over_ = false;           // the alarm ended the hold
  bool alarm_set_ = false;
  std::unique_ptr<grpc::Alarm> alarm_;
  std::map<uint64_t, ChargingCall*> pending_;
  uint64_t next_id_ = 0;
  bool writing_ = false, retiring_ = false, ended_ = false;
};

// The workers, and each caller's streams to them (one per worker, used in turn).
class Router {
 public:
  Router(const std::vector<std::string>& upstreams, int max_age_s, int max_in_flight, bool hold)
      : max_age_(std::chrono::seconds(max_age_s)),
        max_in_flight_(max_in_flight),
        hold_(hold),
        in_flight_(upstreams.size()) {
    for (const auto& target : upstreams) {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(-1);
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one connection per worker
      stubs_.push_back(std::make_unique<grpc::GenericStub>(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
    }
  }

  grpc::GenericStub* next_stub() { return stubs_[turn_.fetch_add(1) % stubs_.size()].get(); }

  void Submit(ChargingCall* call, grpc::CallbackServerContext* ctx, int field, std::string_view request) {
    Metadata md = forwarded(ctx, true);
    std::string key = key_of(md);
    // A worker at its bound is passed over for the caller's next one in turn (the request
    // was not sent: it goes elsewhere unchanged); only when every worker is at its bound
    // is the call refused, as a worker refuses one beyond it. A stream that ended is
    // replaced, up to three times.
    size_t busy = 0, closed = 0;
    while (closed < 3) {
      std::shared_ptr<BatchStream> old;
      std::shared_ptr<BatchStream> stream = Pick(key, md, old);
      if (old) old->Retire();
      if (!stream) {
        refuse(call, kCallers, Status(StatusCode::RESOURCE_EXHAUSTED, "too many callers at once: retry later"));
        return;
      }
      switch (stream->Submit(call, field, request)) {
        case BatchStream::kTaken:
          return;
        case BatchStream::kBusy:
          if (++busy < stubs_.size()) continue;
          refuse(call, kBusy, Status(StatusCode::RESOURCE_EXHAUSTED, "server overloaded: retry later"));
          return;
        case BatchStream::kClosed:
          ++closed;
          break;
      }
    }
    refuse(call, kNoStream, Status(StatusCode::UNAVAILABLE, "no stream to a charging worker: retry"));
  }

  // Streams older than the maximum age are replaced (when next used) and retired.
  void RetireAged() {
    std::vector<std::shared_ptr<BatchStream>> old;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto now = Clock::now();
      for (auto& [key, streams] : callers_) {
        for (auto& s : streams.list) {
          if (s != nullptr && now - s->born() >= max_age_) {
            old.push_back(std::move(s));
            s = nullptr;
          }
        }
      }
      for (auto it = callers_.begin(); it != callers_.end();) {
        bool empty = std::all_of(it->second.list.begin(), it->second.list.end(), [](const auto& s) { return !s; });
        it = empty ? callers_.erase(it) : std::next(it);
      }
    }
    for (auto& s : old) s->Retire();
  }

  // Requests at each worker from the door, and callers with streams (for write_metrics).
  std::vector<int> InFlight() {
    std::vector<int> out;
    for (const auto& n : in_flight_) out.push_back(n.load());
    return out;
  }
  size_t Callers() {
    std::lock_guard<std::mutex> lock(mu_);
    return callers_.size();
  }

  void RetireAll() {
    std::vector<std::shared_ptr<BatchStream>> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [key, streams] : callers_)
        for (auto& s : streams.list)
          if (s != nullptr) all.push_back(s);
      callers_.clear();
    }
    for (auto& s : all) s->Retire();
  }

 private:
  struct Streams {
    std::vector<std::shared_ptr<BatchStream>> list;
    size_t turn = 0;
  };

  // The caller's stream to the next worker in turn (opened when there is none, or the
  // one there has aged: ``old``, for the caller to retire outside the lock).
  std::shared_ptr<BatchStream> Pick(const std::string& key, const Metadata& md, std::shared_ptr<BatchStream>& old) {
    std::lock_guard<std::mutex> lock(mu_);
    if (callers_.size() >= kMaxCallers && callers_.find(key) == callers_.end()) return nullptr;
    Streams& streams = callers_[key];
    if (streams.list.empty()) streams.list.resize(stubs_.size());
    size_t n = streams.turn++ % stubs_.size();
    std::shared_ptr<BatchStream>& slot = streams.list[n];
    // An aged stream is retired (by the caller, outside this lock); one that ended or is
    // retiring is replaced at once, not when its end has been seen.
    if (slot != nullptr && (Clock::now() - slot->born() >= max_age_ || !slot->Usable())) old = std::move(slot);
    if (slot == nullptr) {
      slot = BatchStream::Open(stubs_[n].get(), md, &in_flight_[n], max_in_flight_, hold_,
                               [this, key, n](BatchStream* s) { Forget(key, n, s); });
    }
    return slot;
  }

  void Forget(const std::string& key, size_t n, BatchStream* s) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = callers_.find(key);
    if (it != callers_.end() && it->second.list[n].get() == s) {
      it->second.list[n] = nullptr;
      auto& list = it->second.list;
      if (std::all_of(list.begin(), list.end(), [](const auto& x) { return !x; })) callers_.erase(it);
    }
  }

  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  std::atomic<size_t> turn_{0};
  const Clock::duration max_age_;
  const int max_in_flight_;
  const bool hold_;
  std::deque<std::atomic<int>> in_flight_;  // per worker: requests sent, not answered
  std::mutex mu_;
  std::map<std::string, Streams> callers_;
};

void ChargingCall::OnReadDone(bool ok) {
  if (!ok) {
    Finish(Status(StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
    Unref();  // no stream will answer
    return;
  }
  if (finished_.load()) {  // cancelled before its request was read: not sent
    Unref();
    return;
  }
  count(stats.charging[request()]);
  // As the worker's admission: a call that cannot be answered in time is not started.
  if (ctx_->deadline() - std::chrono::system_clock::now() < std::chrono::milliseconds(1)) {
    refuse(this, kDeadline, Status(StatusCode::DEADLINE_EXCEEDED, "deadline exceeded before the call started"));
    return;
  }
  std::string request = flat(request_);
  if (request.size() > kLargestRequest) {  // with its framing it would pass the worker's limit
    refuse(this, kTooLarge, Status(StatusCode::RESOURCE_EXHAUSTED, "request larger than the server takes"));
    return;
  }
  router_->Submit(this, ctx_, field_, request);
}

// ---------------------------------------------------------------------------
// Every other call, passed through to a worker: messages both ways, metadata, deadline,
// cancellation and the final status.

class PassThrough final : public grpc::ServerGenericBidiReactor {
 public:
  PassThrough(grpc::GenericStub* stub, grpc::GenericCallbackServerContext* ctx) : ctx_(ctx), upstream_(this) {
    count(stats.passed);
    for (const auto& [k, v] : forwarded(ctx, false)) up_ctx_.AddMetadata(k, v);
    up_ctx_.set_deadline(ctx->deadline());
    stub->PrepareBidiStreamingCall(&up_ctx_, ctx->method(), grpc::StubOptions(), &upstream_);
    upstream_.StartRead(&down_msg_);
    // Operations on the worker's side are started from the caller's reactions too: the
    // hold keeps that call open until its last read has come back empty (upstream_open_).
    upstream_.AddHold();
    upstream_.StartCall();
    StartRead(&up_msg_);
  }

  // From the caller.
  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!upstream_open_) return;  // the worker has answered: its status ends the call
    if (ok) {
      upstream_.StartWrite(&up_msg_);
    } else {
      upstream_.StartWritesDone();
    }
  }
  void OnWriteDone(bool ok) override {
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      finish = ended_;
    }
    if (finish) {
      FinishWith();
    } else {
      // The caller is gone (!ok): end the worker's call too. A read must be outstanding
      // either way (its last read came with a message: still open), or the hold on the
      // worker's call is never removed and neither side finishes.
      if (!ok) up_ctx_.TryCancel();
      upstream_.StartRead(&down_msg_);
    }
  }
  void OnCancel() override { up_ctx_.TryCancel(); }
  void OnDone() override { Unref(); }

 private:
  class Upstream final : public grpc::ClientBidiReactor<ByteBuffer, ByteBuffer> {
   public:
    explicit Upstream(PassThrough* p) : p_(p) {}
    // The worker's initial metadata goes to the caller before its first message.
    void OnReadInitialMetadataDone(bool ok) override {
      bool write = false;
      if (ok) {
        for (const auto& [k, v] : p_->up_ctx_.GetServerInitialMetadata())
          p_->ctx_->AddInitialMetadata(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
        p_->StartSendInitialMetadata();
      }
      {
        std::lock_guard<std::mutex> lock(p_->mu_);
        p_->metadata_done_ = true;
        write = p_->held_;
        p_->held_ = false;
      }
      if (write) p_->StartWrite(&p_->down_msg_);
    }
    void OnWriteDone(bool ok) override {
      if (ok) p_->StartRead(&p_->up_msg_);
    }
    void OnReadDone(bool ok) override {
      if (!ok) {  // the worker has ended the call: OnDone brings the status
        {
          std::lock_guard<std::mutex> lock(p_->mu_);
          p_->upstream_open_ = false;
        }
        RemoveHold();
        return;
      }
      {
        std::lock_guard<std::mutex> lock(p_->mu_);
        p_->writing_ = true;
        if (!p_->metadata_done_) {
          p_->held_ = true;
          return;
        }
      }
      p_->StartWrite(&p_->down_msg_);
    }
    void OnDone(const Status& status) override {
      bool now = false;
      {
        std::lock_guard<std::mutex> lock(p_->mu_);
        p_->status_ = status;
        p_->ended_ = true;
        now = !p_->writing_;
      }
      if (now) p_->FinishWith();
      p_->Unref();
    }

   private:
    PassThrough* p_;
  };

  void FinishWith() {
    if (finished_.exchange(true)) return;
    for (const auto& [k, v] : up_ctx_.GetServerTrailingMetadata())
      ctx_->AddTrailingMetadata(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
    Finish(status_);
  }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  grpc::GenericCallbackServerContext* ctx_;
  grpc::ClientContext up_ctx_;
  Upstream upstream_;
  ByteBuffer up_msg_, down_msg_;
  std::mutex mu_;
  bool writing_ = false, ended_ = false, metadata_done_ = false, held_ = false, upstream_open_ = true;
  Status status_;
  std::atomic<bool> finished_{false};
  std::atomic<int> refs_{2};  // OnDone of both sides
};

class Door final : public grpc::CallbackGenericService {
 public:
  explicit Door(Router* router) : router_(router) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    if (ctx->method() == kSession) return new ChargingCall(router_, ctx, kSessionField);
    if (ctx->method() == kEvent) return new ChargingCall(router_, ctx, kEventField);
    return new PassThrough(router_->next_stub(), ctx);
  }

 private:
  Router* router_;
};

// ---------------------------------------------------------------------------

std::shared_ptr<grpc::ServerCredentials> credentials(const Options& o, bool client_certs) {
  if (o.cert.empty()) return grpc::InsecureServerCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      o.key, o.cert, client_certs ? o.client_ca : std::string(), 1);
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_identity_key_cert_pairs();
  if (client_certs) {
    tls.watch_root_certs();
    tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(tls);
}

// The figures of ``stats`` and the router's gauges in Prometheus' text format, written to
// a temporary file renamed over ``path`` so a reader never sees half of them.
void write_metrics(const std::string& path, Router& router) {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out.append("# HELP ").append(name).append(" ").append(help).append("\n");
    out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
  };
  auto sample = [&](const std::string& name, const std::string& labels, uint64_t value) {
    out.append(name);
    if (!labels.empty()) out.append("{").append(labels).append("}");
    out.append(" ").append(std::to_string(value)).append("\n");
  };
  auto request = [](int m) { return std::string("method=\"ChargeBatches\",request=\"") + kRequestNames[m] + "\""; };
  family("charging_door_calls_total", "counter",
         "Calls the door read, by handling: charging (ChargeSession, ChargeEvent, by request: batched onto a "
         "worker's ChargeBatches stream) or passed (every other call, passed through).");
  for (int m = 0; m < 2; ++m)
    sample("charging_door_calls_total", "handling=\"charging\"," + request(m), stats.charging[m].load());
  sample("charging_door_calls_total", "handling=\"passed\"", stats.passed.load());
  family("charging_door_refusals_total", "counter",
         "Charging calls the door answered itself, by request and reason: busy (every worker had "
         "--max-in-flight from the door: RESOURCE_EXHAUSTED), deadline (under 1 ms left: DEADLINE_EXCEEDED), callers (1,024 "
         "callers had streams: RESOURCE_EXHAUSTED), too_large (RESOURCE_EXHAUSTED), no_stream (UNAVAILABLE).");
  for (int m = 0; m < 2; ++m)
    for (int r = 0; r < kRefusals; ++r)
      sample("charging_door_refusals_total", request(m) + ",reason=\"" + kRefusalNames[r] + "\"",
             stats.refused[m][r].load());
  family("charging_door_stream_ends_total", "counter",
         "Charging calls answered by the end of their worker stream instead of a reply, by request and the "
         "status they got (UNAVAILABLE: the worker went away; a refusal: the caller is no longer allowed).");
  for (int m = 0; m < 2; ++m)
    for (int c = 0; c < kStatuses; ++c)
      if (uint64_t n = stats.stream_ends[m][c].load(); n > 0)
        sample("charging_door_stream_ends_total", request(m) + ",result=\"" + kStatusNames[c] + "\"", n);
  family("charging_door_streams_opened_total", "counter", "ChargeBatches streams opened to workers.");
  sample("charging_door_streams_opened_total", "", stats.streams.load());
  family("charging_door_batch_messages_total", "counter", "ChargeBatch messages written to workers.");
  sample("charging_door_batch_messages_total", "", stats.messages.load());
  family("charging_door_batched_requests_total", "counter",
         "Charging requests in the ChargeBatch messages written to workers (per message: divide by "
         "charging_door_batch_messages_total).");
  sample("charging_door_batched_requests_total", "", stats.batched.load());
  family("charging_door_in_flight", "gauge", "Charging requests sent to a worker and not answered yet, by worker.");
  auto in_flight = router.InFlight();
  for (size_t n = 0; n < in_flight.size(); ++n)
    sample("charging_door_in_flight", "worker=\"" + std::to_string(n) + "\"", static_cast<uint64_t>(in_flight[n]));
  family("charging_door_callers", "gauge", "Callers (identity, token, gateway name) with streams to workers.");
  sample("charging_door_callers", "", router.Callers());
  std::string tmp = path + ".tmp";
  {
    std::ofstream file(tmp, std::ios::trunc);
    file << out;
    if (!file.flush()) {
      log_line("cannot write " + tmp);
      return;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) log_line("cannot rename " + tmp + " to " + path);
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "charging-grpc-door: %s\n"
               "usage: charging-grpc-door --listen HOST:PORT --upstream unix:PATH [--upstream ...]\n"
               "       [--token-listen HOST:PORT] [--cert FILE --key FILE [--client-ca FILE]]\n"
               "       [--stream-max-age-s 30] [--grace-s 10] [--ready-fd N] [--max-in-flight 64]\n"
               "       [--hold 1] [--metrics-file PATH] [--arg GRPC_SERVER_OPTION=INTEGER ...]\n",
               why.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage(a + " needs a value");
    std::string v = argv[++i];
    if (a == "--listen") o.listen = v;
    else if (a == "--token-listen") o.token_listen = v;
    else if (a == "--upstream") o.upstreams.push_back(v);
    else if (a == "--cert") o.cert = v;
    else if (a == "--key") o.key = v;
    else if (a == "--client-ca") o.client_ca = v;
    else if (a == "--stream-max-age-s") o.max_stream_age_s = std::atoi(v.c_str());
    else if (a == "--grace-s") o.grace_s = std::atoi(v.c_str());
    else if (a == "--ready-fd") o.ready_fd = std::atoi(v.c_str());
    else if (a == "--max-in-flight") o.max_in_flight = std::atoi(v.c_str());
    else if (a == "--hold") o.hold = v == "1";
    else if (a == "--metrics-file") o.metrics_file = v;
    else if (a == "--arg") {
      auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0) usage("--arg is NAME=INTEGER, not " + v);
      o.server_args.emplace_back(v.substr(0, eq), std::atoi(v.c_str() + eq + 1));
    }
    else usage("unknown option " + a);
  }
  if (o.listen.empty()) usage("--listen is required");
  if (o.upstreams.empty()) usage("at least one --upstream is required");
  if (o.cert.empty() != o.key.empty()) usage("--cert and --key go together");
  if (!o.client_ca.empty() && o.cert.empty()) usage("--client-ca needs --cert and --key");
  if (!o.token_listen.empty() && o.cert.empty()) usage("--token-listen needs --cert and --key");
  if (o.max_stream_age_s <= 0 || o.grace_s < 0) usage("--stream-max-age-s must be positive, --grace-s not negative");
  if (o.max_in_flight <= 0) usage("--max-in-flight must be positive");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  // Signals are taken by sigwait below, never by grpc's threads.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  Router router(o.upstreams, o.max_stream_age_s, o.max_in_flight, o.hold);
  Door door(&router);
  grpc::ServerBuilder builder;
  int port = 0, token_port = 0;
  builder.AddListeningPort(o.listen, credentials(o, !o.client_ca.empty()), &port);
  if (!o.token_listen.empty()) builder.AddListeningPort(o.token_listen, credentials(o, false), &token_port);
  for (const auto& [name, value] : o.server_args) builder.AddChannelArgument(name, value);
  builder.RegisterCallbackGenericService(&door);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0 || (!o.token_listen.empty() && token_port == 0)) {
    log_line("cannot listen on " + o.listen + (o.token_listen.empty() ? "" : " and " + o.token_listen));
    return 1;
  }
  log_line("serving on port " + std::to_string(port) + (token_port ? " and " + std::to_string(token_port) : "") +
           " for " + std::to_string(o.upstreams.size()) + " worker(s)");
  if (o.ready_fd >= 0) {
    std::string said = "serving " + std::to_string(port) + " " + std::to_string(token_port) + "\n";
    if (write(o.ready_fd, said.data(), said.size()) < 0) log_line("could not say it is serving");
    close(o.ready_fd);
  }

  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  if (!o.metrics_file.empty()) write_metrics(o.metrics_file, router);
  std::thread ager([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (!cv.wait_for(lock, std::chrono::seconds(1), [&] { return stopping; })) {
      router.RetireAged();
      if (!o.metrics_file.empty()) write_metrics(o.metrics_file, router);
    }
  });

  int sig = 0;
  sigwait(&stop_signals, &sig);
  log_line("stopping: draining calls for up to " + std::to_string(o.grace_s) + " s");
  // A call that does not end within the grace period does not keep the door up.
  std::thread([grace = o.grace_s] {
    std::this_thread::sleep_for(std::chrono::seconds(grace + 5));
    log_line("calls still open after the grace period: exiting");
    std::_Exit(1);
  }).detach();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(o.grace_s));
  router.RetireAll();
  {
    std::lock_guard<std::mutex> lock(mu);
    stopping = true;
  }
  cv.notify_all();
  ager.join();
  log_line("stopped");
  // The batch streams' last replies were delivered before Shutdown returned; the
  // streams close with the process.
  std::_Exit(0);
}
