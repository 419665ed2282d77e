// C ABI over PyTorch's distributed engine (c10d) for src/dist/ffi.rs: a TCPStore rendezvous and a Gloo process
// group, with the few collectives data-parallel training needs. Tensors arrive as tch's `at::Tensor*`. Every
// function returns NULL on success or a malloc'ed error message (released with poac_dist_free_error): no C++
// exception crosses into Rust.

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef POAC_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <c10/util/Logging.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

char* message(const std::string& text) { return strdup(text.c_str()); }

template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in c10d");
  }
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) { work->wait(); }

}  // namespace

extern "C" {

// How a rank's Gloo device picks its network interface.
enum poac_device_kind { POAC_DEVICE_HOSTNAME = 0, POAC_DEVICE_INTERFACE = 1, POAC_DEVICE_DEFAULT = 2 };
// Reductions of poac_dist_all_reduce.
enum poac_reduce_op { POAC_REDUCE_SUM = 0, POAC_REDUCE_MAX = 1 };

// NCCL (`nccl` != 0) when built with the `cuda` feature, else Gloo on the given network device.
char* poac_dist_init(const char* master_addr, uint16_t master_port, int rank, int world_size, int64_t timeout_ms,
                     int nccl, int device_kind, const char* device_name, Group** out) {
  return guarded([&] {
    // c10d logs every failed connection attempt of a rendezvous, with a C++ backtrace, before it throws; poac
    // reports the exception itself (without the backtrace). So c10 logs only fatal messages unless
    // TORCH_CPP_LOG_LEVEL (INFO, WARNING, ERROR) asks for more.
    if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) {
      FLAGS_caffe2_log_level = 3;  // c10's FATAL
    } else {
      c10::initLogging();
    }
    c10::SetGlobalRank(rank);
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = master_port;
    options.isServer = rank == 0;
    options.numWorkers = static_cast<std::size_t>(world_size);
    options.waitWorkers = true;
    options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), options);
    if (nccl) {
#ifdef POAC_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      *out = new Group{store, c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options)};
      return;
#else
      throw std::runtime_error("poac was built without the `cuda` feature: NCCL is not available");
#endif
    }
    auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
    switch (device_kind) {
      case POAC_DEVICE_HOSTNAME:
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(device_name));
        break;
      case POAC_DEVICE_INTERFACE:
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(device_name));
        break;
      default:
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    gloo->threads = 1;
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, gloo);
    *out = new Group{store, backend};
  });
}

char* poac_dist_all_reduce(Group* group, at::Tensor* tensor, int op) {
  return guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = op == POAC_REDUCE_MAX ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    wait(group->backend->allreduce(tensors, options));
  });
}

char* poac_dist_broadcast(Group* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    wait(group->backend->broadcast(tensors, options));
  });
}

// `output` holds world_size × numel(input) elements; rank r's input lands in its r-th chunk.
char* poac_dist_all_gather(Group* group, const at::Tensor* input, at::Tensor* output) {
  return guarded([&] {
    std::vector<at::Tensor> inputs{*input};
    std::vector<std::vector<at::Tensor>> outputs{output->chunk(group->backend->getSize())};
    wait(group->backend->allgather(outputs, inputs));
  });
}

char* poac_dist_barrier(Group* group) {
  return guarded([&] { wait(group->backend->barrier()); });
}

void poac_dist_destroy(Group* group) { delete group; }

void poac_dist_free_error(char* error) { free(error); }

}  // extern "C"
